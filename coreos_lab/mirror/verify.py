"""`lab mirror verify`: re-hash every artifact against its record, and report records that are damaged,
artifacts without a record and interrupted downloads; and the same for the container images: every blob
re-hashed against its name, the blobs each image needs, a damaged catalog (index.json) or manifest."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coreos_lab.errors import BadInput
from coreos_lab.mirror.checksums import file_digests
from coreos_lab.mirror.images.store import ImageStore, StoredImage
from coreos_lab.mirror.store import KINDS, OUTSIDE_ROOT, RECORD_SUFFIX, CatalogEntry, MirrorStore
from coreos_lab.progress import Reporter, SilentReporter

# Problems (fail the verification) and notes (do not).
OK, MISMATCH, SIZE_MISMATCH, MISSING_BOX, DAMAGED_RECORD, UNREADABLE = (
    "ok",
    "sha256 mismatch",
    "size mismatch",
    "box missing",
    "damaged record",
    "unreadable box",
)
# A directory that cannot be listed hides whatever it holds; a box that is a symlink out of the root is not served.
UNREADABLE_DIR, OUTSIDE = "unreadable directory", "outside the root"
NO_RECORD, PARTIAL = "no record", "partial download"
# Of images: a blob an image needs that is not there, a catalog or manifest that cannot be read, and (a note)
# a blob no image needs, left by a refused or interrupted fetch or a replaced tag.
MISSING_BLOB, UNREADABLE_BLOB, DAMAGED_CATALOG, DAMAGED_MANIFEST, UNREFERENCED = (
    "blob missing",
    "unreadable blob",
    "damaged catalog",
    "damaged manifest",
    "unreferenced blob",
)
PROBLEMS = {
    MISMATCH,
    SIZE_MISMATCH,
    MISSING_BOX,
    DAMAGED_RECORD,
    UNREADABLE,
    UNREADABLE_DIR,
    OUTSIDE,
    MISSING_BLOB,
    UNREADABLE_BLOB,
    DAMAGED_CATALOG,
    DAMAGED_MANIFEST,
}
NOTES = {NO_RECORD, PARTIAL, UNREFERENCED}


@dataclass(frozen=True)
class Finding:
    path: Path
    status: str
    detail: str = ""
    box: str | None = None  # "name version (provider, arch)" when the record could be read
    image: str | None = None  # "repository:tag" of the image(s) a blob or manifest belongs to

    @property
    def failed(self) -> bool:
        return self.status in PROBLEMS

    @property
    def label(self) -> str | None:
        return self.box or self.image

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "status": self.status,
            "detail": self.detail,
            "box": self.box,
            "image": self.image,
        }


@dataclass(frozen=True)
class VerifyReport:
    root: Path
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(f.failed for f in self.findings)

    def as_dict(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "ok": self.ok,
            "checked": sum(1 for f in self.findings if f.status not in NOTES),
            "failed": sum(1 for f in self.findings if f.failed),
            "findings": [f.as_dict() for f in self.findings],
        }


def verify_store(store: MirrorStore, reporter: Reporter | None = None) -> VerifyReport:
    reporter = reporter or SilentReporter()
    scan = store.scan()
    findings = [Finding(directory, UNREADABLE_DIR, why) for directory, why in scan.unreadable]
    recorded: set[Path] = set()
    for record in scan.records:
        stem = record.name.removesuffix(RECORD_SUFFIX)
        recorded.update(record.with_name(stem + kind.suffix) for kind in KINDS.values())
        try:
            entry = store.load_record(record)
        except BadInput as exc:
            findings.append(Finding(record, DAMAGED_RECORD, exc.message))
            continue
        findings.append(_verify_artifact(store, entry, record, reporter))
    for box in scan.artifacts:
        if box not in recorded:
            findings.append(Finding(box, NO_RECORD, "not in the catalog (never served)"))
    for part in scan.parts:
        try:
            size = part.stat().st_size
        except FileNotFoundError:  # committed or discarded meanwhile
            continue
        findings.append(Finding(part, PARTIAL, f"{size} bytes; the next fetch resumes it"))
    findings += verify_images(ImageStore(store.root), reporter)
    return VerifyReport(store.root, findings)


def _verify_artifact(store: MirrorStore, entry: CatalogEntry, record: Path, reporter: Reporter) -> Finding:
    box = store.artifact_path(entry.key)
    label = str(entry.key)
    if (box.is_symlink() or box.exists()) and not store.within_root(box):
        return Finding(box, OUTSIDE, OUTSIDE_ROOT, label)
    try:
        size = box.stat().st_size
        with reporter.transfer(f"verifying {entry.name} {entry.version}", size) as advance:
            digest = file_digests(box, ["sha256"], advance)["sha256"]
    except FileNotFoundError:
        return Finding(box, MISSING_BOX, f"{record.name} has no box beside it", label)
    except OSError as exc:
        return Finding(box, UNREADABLE, exc.strerror or str(exc), label)
    if digest != entry.sha256:
        return Finding(box, MISMATCH, f"expected {entry.sha256}, got {digest}", label)
    if size != entry.size:
        return Finding(box, SIZE_MISMATCH, f"expected {entry.size} bytes, got {size}", label)
    return Finding(box, OK, entry.sha256, label)


def verify_images(store: ImageStore, reporter: Reporter) -> list[Finding]:
    """Every blob re-hashed against its name; then per image: ok, or the blobs it needs that are missing or
    damaged; a damaged catalog or manifest; unreferenced blobs and interrupted downloads as notes."""
    findings: list[Finding] = []
    try:
        images = store.load_index()
    except BadInput as exc:
        findings.append(Finding(store.index_path, DAMAGED_CATALOG, exc.message))
        images = []
    users: dict[str, list[str]] = {}  # blob digest -> the images that need it
    needs: dict[str, list[str]] = {}  # image name -> the digests it needs
    for image in images:
        needs[image.name] = _needed(store, image, findings)
        for digest in needs[image.name]:
            users.setdefault(digest, []).append(image.name)
    try:
        blobs = store.blob_paths()
    except OSError as exc:
        findings.append(Finding(store.blobs_dir, UNREADABLE_DIR, exc.strerror or str(exc)))
        blobs = []
    damaged: set[str] = set()
    with reporter.transfer("verifying image blobs", sum(_size(b) for b in blobs)) as advance:
        for blob in blobs:
            digest = f"sha256:{blob.name}"
            if not store.within_blobs(blob):
                findings.append(Finding(blob, OUTSIDE, OUTSIDE_ROOT, image=_names(users.get(digest))))
                damaged.add(digest)
                continue
            try:
                actual = "sha256:" + file_digests(blob, ["sha256"], advance)["sha256"]
            except OSError as exc:
                findings.append(
                    Finding(blob, UNREADABLE_BLOB, exc.strerror or str(exc), image=_names(users.get(digest)))
                )
                damaged.add(digest)
                continue
            if actual != digest:
                detail = f"expected {digest}, got {actual}"
                findings.append(Finding(blob, MISMATCH, detail, image=_names(users.get(digest))))
                damaged.add(digest)
            elif digest not in users:
                findings.append(Finding(blob, UNREFERENCED, "no image in the catalog needs it (never served)"))
    for image in images:
        needed = needs[image.name]
        missing = [d for d in needed if not store.has_blob(d)]
        for digest in missing:
            findings.append(Finding(store.blob_path(digest), MISSING_BLOB, f"{image.name} needs it", image=image.name))
        if not missing and not damaged.intersection(needed) and needed:
            findings.append(
                Finding(store.blob_path(image.digest), OK, f"{image.digest}, {len(needed)} blobs", image=image.name)
            )
    for part in store.part_paths():
        size = _size(part)
        findings.append(Finding(part, PARTIAL, f"{size} bytes; the next fetch resumes it"))
    return findings


def _needed(store: ImageStore, image: StoredImage, findings: list[Finding]) -> list[str]:
    """The digests of the blobs an image needs (as far as its manifests can be read)."""
    try:
        return list(dict.fromkeys(d.digest for d in store.required_blobs(image.descriptor)))
    except (BadInput, OSError) as exc:
        detail = exc.message if isinstance(exc, BadInput) else str(exc)
        findings.append(Finding(store.blob_path(image.digest), DAMAGED_MANIFEST, detail, image=image.name))
        return []


def _names(names: list[str] | None) -> str | None:
    return ", ".join(names) if names else None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:  # committed or discarded meanwhile
        return 0
