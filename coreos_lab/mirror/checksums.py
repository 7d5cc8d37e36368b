"""Checksums Vagrant knows (docs/field-notes.md §1), computed in one pass over the bytes for several algorithms."""

from __future__ import annotations

import hashlib
import re
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path

from coreos_lab.errors import BadInput
from coreos_lab.mirror.chunk_worker import ChunkWorker, FileRange

# Vagrant's checksum types and the length of their hex digests.
CHECKSUM_TYPES = {"md5": 32, "sha1": 40, "sha256": 64, "sha384": 96, "sha512": 128}
CHUNK = 1 << 20


def check_checksum(checksum_type: object, checksum: object, where: str) -> tuple[str, str]:
    """A normalised (type, hex digest) pair, or `BadInput` naming the field and the value.

    `where` names the file and the fields' parent, e.g. "box.json: field versions[0].providers[0]."."""
    if not isinstance(checksum_type, str) or checksum_type.lower() not in CHECKSUM_TYPES:
        raise BadInput(
            f"{where}checksum_type: unknown checksum_type {checksum_type!r} (Vagrant knows {', '.join(CHECKSUM_TYPES)})"
        )
    kind = checksum_type.lower()
    if not isinstance(checksum, str) or not re.fullmatch(rf"[0-9a-fA-F]{{{CHECKSUM_TYPES[kind]}}}", checksum):
        raise BadInput(f"{where}checksum: checksum {checksum!r} is not a {kind} hex digest")
    return kind, checksum.lower()


class Hashers:
    """Several hashes fed from the same bytes, each on its own thread (`ChunkWorker`).

    `update` returns as soon as the chunk is queued, so the next one is read or received while the last ones
    are hashed, and each hash runs at its own pace: a verified download costs about its slowest hash (sha512),
    not the sum of all of them and the I/O. `update_from_file` queues bytes already on disk (a part being
    resumed), which the hashes read themselves while the rest arrives.
    """

    def __init__(self, algorithms: Iterable[str]):
        self._hashes = {name: hashlib.new(name) for name in dict.fromkeys(algorithms)}
        self._workers = [ChunkWorker(h.update, f"hash-{name}") for name, h in self._hashes.items()]
        # Stops the threads of hashers dropped halfway (e.g. by an exception) without `close`.
        self._finalizer = weakref.finalize(self, _abandon, self._workers)

    def update(self, chunk: bytes) -> None:
        for worker in self._workers:
            worker.put(chunk)

    def update_from_file(self, fd: int, size: int, start: int = 0) -> None:
        """Hash `size` bytes of the open file `fd` from `start` next; `fd` must stay open until `hexdigests`."""
        for worker in self._workers:
            worker.put(FileRange(fd, start, start + size))

    def hexdigests(self) -> dict[str, str]:
        for worker in self._workers:
            worker.finish()
        self._finalizer.detach()
        return {name: h.hexdigest() for name, h in self._hashes.items()}

    def close(self) -> None:
        """Stop hashing (the digests are not wanted)."""
        self._finalizer()


def _abandon(workers: list[ChunkWorker]) -> None:
    for worker in workers:
        worker.abandon(wait=False)
    for worker in workers:
        worker.abandon()


def file_digests(
    path: Path, algorithms: Iterable[str], on_chunk: Callable[[int], None] | None = None
) -> dict[str, str]:
    """Hex digests of a file for each algorithm, in one read."""
    hashers = Hashers(algorithms)
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(CHUNK):
                hashers.update(chunk)
                if on_chunk is not None:
                    on_chunk(len(chunk))
        return hashers.hexdigests()
    finally:
        hashers.close()
