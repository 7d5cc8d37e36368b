"""`lab mirror import`: put a box that was downloaded some other way into the mirror.

With a metadata document the box's name, version, provider and checksum come from it and the box must
match the checksum. Importing the same box again changes nothing; a different box under an existing
name/version/provider/architecture is refused unless `force`. The box is hashed while it is copied into its
`.part`, then committed: the store never shows a half-copied or unverified box.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

import zstandard

from coreos_lab.errors import BadInput
from coreos_lab.fsutil import naming_io_errors
from coreos_lab.json_input import MAX_BYTES, parse_json
from coreos_lab.mirror import box_metadata
from coreos_lab.mirror.checksums import CHUNK, Hashers, file_digests
from coreos_lab.mirror.store import (
    DEFAULT_ARCH,
    BoxKey,
    CatalogEntry,
    MirrorStore,
    check_name,
    check_provider,
    check_version,
)
from coreos_lab.progress import Reporter, SilentReporter
from coreos_lab.server import name_taken

# Archive formats Vagrant unpacks, by their leading bytes.
_MAGIC = {
    b"\x1f\x8b": "gzip",
    b"BZh": "bzip2",
    b"\xfd7zXZ\x00": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"PK\x03\x04": "zip",
}

_DECOMPRESS: dict[str, Callable[[BinaryIO], Any]] = {
    "gzip": lambda handle: gzip.GzipFile(fileobj=handle, mode="rb"),
    "bzip2": bz2.BZ2File,
    "xz": lzma.LZMAFile,
}
METADATA_LIMIT = 1 << 16  # a box's metadata.json names its provider (and architecture): a few dozen bytes


@dataclass(frozen=True)
class ImportResult:
    entry: CatalogEntry
    action: str  # "added", "replaced" or "unchanged"

    def as_dict(self, base_url: str | None = None) -> dict[str, Any]:
        return {"action": self.action, "box": self.entry.as_dict(base_url)}


def import_box(
    store: MirrorStore,
    box: Path,
    *,
    metadata: Path | None = None,
    name: str | None = None,
    version: str | None = None,
    provider: str | None = None,
    architecture: str | None = None,
    force: bool = False,
    reporter: Reporter | None = None,
) -> ImportResult:
    reporter = reporter or SilentReporter()
    box_format = sniff_box(box)
    expected: tuple[str, str] | None = None
    description = None
    if metadata is not None:
        chosen = box_metadata.select(
            box_metadata.parse(_read_metadata(metadata), str(metadata)),
            str(metadata),
            name=name,
            version=version,
            provider=provider,
            architecture=architecture,
        )
        key, expected, description = chosen.key, (chosen.checksum_type, chosen.checksum), chosen.description
    else:
        for option, value in (("--name", name), ("--version", version)):
            if not value:
                raise BadInput(f"{option} is required when importing {box} without --metadata")
        assert name is not None and version is not None
        check_name(name, "name (--name)")
        check_version(version, "version (--version)")
        for option, value in (("--provider", provider), ("--architecture", architecture)):
            if value is not None:
                check_provider(value, option.removeprefix("--") + f" ({option})")
        # No checksum to trust: the archive must at least be whole, and be a box for the provider it is filed under.
        box_prov, box_arch = box_provider(box, box_format)
        if provider is None:
            if box_prov is None:
                raise BadInput(f"{box} has no readable metadata.json: pass --provider")
            provider = box_prov
        elif box_prov is not None and box_prov != provider:
            raise BadInput(f"{box}: metadata.json says provider {box_prov!r}, not {provider!r} (--provider)")
        key = BoxKey(name, version, provider, architecture or box_arch or DEFAULT_ARCH)

    if (taken := name_taken(key.name)) is not None:
        raise BadInput(f"box name {key.name!r} cannot be served: {taken}", hint="import it under another --name")
    algorithms = ["sha256"] + ([expected[0]] if expected else [])

    def differs(stored: CatalogEntry) -> str | None:
        # Decided before writing anything, so a refused or repeated import leaves the store as it was.
        with reporter.transfer(f"hashing {box.name}", box.stat().st_size) as advance:
            digests = file_digests(box, algorithms, advance)
        _check(expected, digests, box, metadata)
        return None if digests["sha256"] == stored.sha256 else f"and {box} differs (sha256 {digests['sha256']})"

    on_wait = lambda: reporter.note(f"waiting for another lab process writing {key}")  # noqa: E731
    with naming_io_errors(), store.staging(key, on_wait=on_wait) as part:
        admission = store.admit(key, force=force, differs=differs)
        if admission.unchanged is not None:
            return ImportResult(admission.unchanged, "unchanged")
        digests = _copy_hashing(box, part, algorithms, reporter)
        try:
            _check(expected, digests, box, metadata)
            entry = store.commit(
                key, Path(part.name), sha256=digests["sha256"], source=str(box.resolve()), description=description
            )
        except BaseException:
            _discard(part)  # an import is not resumable: leave no half copy behind
            raise
    return ImportResult(entry, admission.action)


def _read_metadata(path: Path) -> bytes:
    """Of a file named as metadata, no more than a JSON document may be (then `parse_json` refuses it)."""
    try:
        with path.open("rb") as handle:
            return handle.read(MAX_BYTES + 1)
    except OSError as exc:
        raise BadInput(f"cannot read box metadata {path}: {exc.strerror}") from exc


def sniff_box(box: Path) -> str:
    """The archive format of a box file, or `BadInput` when it is unreadable or no box at all."""
    try:
        with box.open("rb") as handle:
            head = handle.read(512)
    except OSError as exc:
        raise BadInput(f"cannot read box {box}: {exc.strerror}") from exc
    for magic, kind in _MAGIC.items():
        if head.startswith(magic):
            return kind
    if head[257:262] == b"ustar":
        return "tar"
    raise BadInput(f"{box} is not a box: expected a tar, tar.gz or zip archive, got {head[:8]!r}…")


def box_provider(box: Path, box_format: str) -> tuple[str | None, str | None]:
    """Provider and architecture from the box's own metadata.json, (None, None) without one.

    Reads the whole archive once (as a stream), so a truncated or damaged box is refused here: gzip, bzip2, xz
    and zstd streams are read to their end-of-stream checks, zip members are CRC-checked. Of metadata.json no
    more than METADATA_LIMIT bytes are read: a box whose metadata.json unpacks to gigabytes is refused, not
    held in memory.
    """
    raw: bytes | None = None
    try:
        if box_format == "zip":
            with zipfile.ZipFile(box) as archive:
                if (bad := archive.testzip()) is not None:
                    raise BadInput(f"cannot read box {box}: member {bad} is damaged")
                if "metadata.json" in archive.namelist():
                    with archive.open("metadata.json") as metadata_json:
                        raw = metadata_json.read(METADATA_LIMIT + 1)
        else:
            with box.open("rb") as handle, _decompressed(handle, box_format) as stream:
                with tarfile.open(fileobj=stream, mode="r|") as archive:
                    for member in _each_member(archive):
                        if member.isfile() and member.name.lstrip("./") == "metadata.json":
                            extracted = archive.extractfile(member)
                            raw = extracted.read(METADATA_LIMIT + 1) if extracted else None
                # tar stops at its end marker; the compressor's check (CRC, length) comes after it.
                while stream.read(CHUNK):
                    pass
    except (OSError, tarfile.TarError, zipfile.BadZipFile, EOFError, lzma.LZMAError, zstandard.ZstdError) as exc:
        raise BadInput(f"cannot read box {box} (truncated or damaged?): {exc}") from exc
    if raw is None:
        return None, None
    source = f"{box}: member metadata.json"
    if len(raw) > METADATA_LIMIT:
        raise BadInput(f"{source} has more than {METADATA_LIMIT} bytes; not a box's metadata.json")
    doc = parse_json(raw, source)
    provider = doc.get("provider") if isinstance(doc, dict) else None
    if not isinstance(provider, str) or not provider:
        raise BadInput(f"{source} has no valid field provider: {raw[:80]!r}")
    arch = doc.get("architecture")
    return provider, arch if isinstance(arch, str) and arch else None


def _each_member(archive: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """The members of a streamed tar, each forgotten after its turn: `tarfile` keeps a list of every member it
    has seen, and a megabyte of compressed empty members is hundreds of thousands of them."""
    while (member := archive.next()) is not None:
        archive.members.clear()  # type: ignore[attr-defined]  # public, but not in typeshed
        yield member


def _decompressed(handle: BinaryIO, box_format: str) -> AbstractContextManager[BinaryIO]:
    """The tar stream inside a box file, decompressed as it is read."""
    if box_format == "zstd":
        return nullcontext(cast(BinaryIO, ZstdReader(handle)))
    opener = _DECOMPRESS.get(box_format)
    return cast(AbstractContextManager[BinaryIO], opener(handle)) if opener else nullcontext(handle)


class ZstdReader:
    """The decompressed bytes of a zstd stream, read to its end: a stream cut short is an EOFError, where
    zstandard's own readers end quietly. The compressed bytes go in a kilobyte at a time because a zstd block
    of one repeated byte expands 32768-fold: what a kilobyte expands to (at most 32 MiB) is all that is held."""

    FEED = 1024

    def __init__(self, handle: BinaryIO):
        self._handle = handle
        self._decompressor = zstandard.ZstdDecompressor()
        self._frame = self._decompressor.decompressobj()
        self._frame_fed = False
        self._buffer = b""
        self._pos = 0

    def read(self, size: int) -> bytes:
        while len(self._buffer) - self._pos < size and self._fill():
            pass
        chunk = self._buffer[self._pos : self._pos + size]
        self._pos += len(chunk)
        return chunk

    def _fill(self) -> bool:
        """Decompress the next compressed kilobyte into the buffer; False at the end of the file."""
        data = self._handle.read(self.FEED)
        if not data:
            if self._frame_fed and not self._frame.eof:
                raise EOFError("the zstd stream ends in the middle of a frame")
            return False
        pieces = [self._buffer[self._pos :]]
        while data:  # a stream may hold several frames, each decompressed by its own object
            if self._frame.eof:
                self._frame, self._frame_fed = self._decompressor.decompressobj(), False
            pieces.append(self._frame.decompress(data))
            self._frame_fed = True
            data = self._frame.unused_data if self._frame.eof else b""
        self._buffer, self._pos = b"".join(pieces), 0
        return True


def _copy_hashing(box: Path, part: BinaryIO, algorithms: list[str], reporter: Reporter) -> dict[str, str]:
    hashers = Hashers(algorithms)
    part.seek(0)
    part.truncate()
    staged = Path(part.name)
    try:
        with box.open("rb") as source, reporter.transfer(f"importing {box.name}", box.stat().st_size) as advance:
            while True:
                with naming_io_errors(box, "read"):
                    chunk = source.read(CHUNK)
                if not chunk:
                    break
                hashers.update(chunk)
                with naming_io_errors(staged):
                    part.write(chunk)
                advance(len(chunk))
        with naming_io_errors(staged):
            part.flush()
    except BaseException:
        _discard(part)  # an import is not resumable: leave no half copy behind
        raise
    return hashers.hexdigests()


def _discard(part: BinaryIO) -> None:
    part.seek(0)
    part.truncate()


def _check(expected: tuple[str, str] | None, digests: dict[str, str], box: Path, metadata: Path | None) -> None:
    if expected is None:
        return
    kind, want = expected
    if digests[kind] != want:
        raise BadInput(f"{box}: {kind} is {digests[kind]}, but {metadata} says {want} (wrong checksum)")
