"""Checksums Vagrant knows (docs/field-notes.md §1), computed in one pass over the bytes for several algorithms."""

from __future__ import annotations

import hashlib
import re
import weakref
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from coreos_lab.errors import BadInput

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
    """Several hashes fed from the same bytes.

    With more than one algorithm each runs on its own thread (hashlib releases the GIL on large buffers),
    and `update` returns before they finish, so the next chunk is read or received while the last one is
    hashed: a verified download costs about its slowest hash (sha512), not the sum of all and the I/O.
    """

    def __init__(self, algorithms: Iterable[str]):
        self._hashes = {name: hashlib.new(name) for name in dict.fromkeys(algorithms)}
        self._pool = ThreadPoolExecutor(len(self._hashes), "hash") if len(self._hashes) > 1 else None
        self._pending: list[Future[None]] = []
        if self._pool is not None:
            weakref.finalize(self, self._pool.shutdown, wait=False)

    def update(self, chunk: bytes) -> None:
        self._wait()
        if self._pool is None:
            for h in self._hashes.values():
                h.update(chunk)
        else:
            pool = self._pool
            self._pending = [pool.submit(h.update, chunk) for h in self._hashes.values()]

    def _wait(self) -> None:
        for future in self._pending:
            future.result()
        self._pending = []

    def hexdigests(self) -> dict[str, str]:
        self._wait()
        return {name: h.hexdigest() for name, h in self._hashes.items()}


def file_digests(
    path: Path, algorithms: Iterable[str], on_chunk: Callable[[int], None] | None = None
) -> dict[str, str]:
    """Hex digests of a file for each algorithm, in one read."""
    hashers = Hashers(algorithms)
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            hashers.update(chunk)
            if on_chunk is not None:
                on_chunk(len(chunk))
    return hashers.hexdigests()
