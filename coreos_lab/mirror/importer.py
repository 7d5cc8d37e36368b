"""`lab mirror import`: put a box that was downloaded some other way into the mirror.

With a metadata document the box's name, version, provider and checksum come from it and the box must
match the checksum. Importing the same box again changes nothing; a different box under an existing
name/version/provider/architecture is refused unless `force`. The box is hashed while it is copied into its
`.part`, then committed: the store never shows a half-copied or unverified box.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from coreos_lab.errors import BadInput
from coreos_lab.mirror import box_metadata
from coreos_lab.mirror.checksums import CHUNK, Hashers, file_digests
from coreos_lab.mirror.store import DEFAULT_ARCH, BoxKey, CatalogEntry, MirrorStore
from coreos_lab.progress import Reporter, SilentReporter

# Archive formats Vagrant unpacks, by their leading bytes.
_MAGIC = {
    b"\x1f\x8b": "gzip",
    b"BZh": "bzip2",
    b"\xfd7zXZ\x00": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"PK\x03\x04": "zip",
}

_DECOMPRESS = {"gzip": gzip.GzipFile, "bzip2": bz2.BZ2File, "xz": lzma.LZMAFile}


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
        # No checksum to trust: the archive must at least be whole, and be a box for the provider it is filed under.
        box_prov, box_arch = box_provider(box, box_format)
        if provider is None:
            if box_prov is None:
                raise BadInput(f"{box} has no readable metadata.json: pass --provider")
            provider = box_prov
        elif box_prov is not None and box_prov != provider:
            raise BadInput(f"{box}: metadata.json says provider {box_prov!r}, not {provider!r} (--provider)")
        key = BoxKey(name, version, provider, architecture or box_arch or DEFAULT_ARCH)

    algorithms = ["sha256"] + ([expected[0]] if expected else [])

    def differs(stored: CatalogEntry) -> str | None:
        # Decided before writing anything, so a refused or repeated import leaves the store as it was.
        with reporter.transfer(f"hashing {box.name}", box.stat().st_size) as advance:
            digests = file_digests(box, algorithms, advance)
        _check(expected, digests, box, metadata)
        return None if digests["sha256"] == stored.sha256 else f"and {box} differs (sha256 {digests['sha256']})"

    with store.staging(key, on_wait=lambda: reporter.note(f"waiting for another lab process writing {key}")) as part:
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
    try:
        return path.read_bytes()
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

    Reads the whole archive once (as a stream), so a truncated or damaged box is refused here: gzip, bzip2 and
    xz streams are read to their end-of-stream checks, zip members are CRC-checked. zstd boxes cannot be read
    without an extra library and are taken as they are.
    """
    raw: bytes | None = None
    try:
        if box_format == "zip":
            with zipfile.ZipFile(box) as archive:
                if (bad := archive.testzip()) is not None:
                    raise BadInput(f"cannot read box {box}: member {bad} is damaged")
                raw = archive.read("metadata.json") if "metadata.json" in archive.namelist() else None
        elif box_format != "zstd":
            opener = _DECOMPRESS.get(box_format)
            with opener(box, "rb") if opener else box.open("rb") as stream:
                with tarfile.open(fileobj=stream, mode="r|") as archive:
                    for member in archive:
                        if member.isfile() and member.name.lstrip("./") == "metadata.json":
                            extracted = archive.extractfile(member)
                            raw = extracted.read() if extracted else None
                # tar stops at its end marker; the compressor's check (CRC, length) comes after it.
                while stream.read(CHUNK):
                    pass
    except (OSError, tarfile.TarError, zipfile.BadZipFile, EOFError, lzma.LZMAError) as exc:
        raise BadInput(f"cannot read box {box} (truncated or damaged?): {exc}") from exc
    if raw is None:
        return None, None
    try:
        doc = json.load(io.BytesIO(raw))
        provider = doc["provider"]
        if not isinstance(provider, str) or not provider:
            raise TypeError
    except (ValueError, KeyError, TypeError) as exc:
        raise BadInput(f"{box}: metadata.json has no valid field provider: {raw[:80]!r}") from exc
    arch = doc.get("architecture")
    return provider, arch if isinstance(arch, str) and arch else None


def _copy_hashing(box: Path, part: BinaryIO, algorithms: list[str], reporter: Reporter) -> dict[str, str]:
    hashers = Hashers(algorithms)
    part.seek(0)
    part.truncate()
    try:
        with box.open("rb") as source, reporter.transfer(f"importing {box.name}", box.stat().st_size) as advance:
            while chunk := source.read(CHUNK):
                hashers.update(chunk)
                part.write(chunk)
                advance(len(chunk))
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
