"""`lab mirror verify`: re-hash every artifact against its record, and report records that are damaged,
artifacts without a record and interrupted downloads."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coreos_lab.errors import BadInput
from coreos_lab.mirror.checksums import file_digests
from coreos_lab.mirror.store import KINDS, RECORD_SUFFIX, MirrorStore
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
NO_RECORD, PARTIAL = "no record", "partial download"
PROBLEMS = {MISMATCH, SIZE_MISMATCH, MISSING_BOX, DAMAGED_RECORD, UNREADABLE}


@dataclass(frozen=True)
class Finding:
    path: Path
    status: str
    detail: str = ""
    box: str | None = None  # "name version (provider, arch)" when the record could be read

    @property
    def failed(self) -> bool:
        return self.status in PROBLEMS

    def as_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "status": self.status, "detail": self.detail, "box": self.box}


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
            "checked": sum(1 for f in self.findings if f.status not in (NO_RECORD, PARTIAL)),
            "failed": sum(1 for f in self.findings if f.failed),
            "findings": [f.as_dict() for f in self.findings],
        }


def verify_store(store: MirrorStore, reporter: Reporter | None = None) -> VerifyReport:
    reporter = reporter or SilentReporter()
    findings: list[Finding] = []
    recorded: set[Path] = set()
    for record in store.record_paths():
        stem = record.name.removesuffix(RECORD_SUFFIX)
        recorded.update(record.with_name(stem + kind.suffix) for kind in KINDS.values())
        try:
            entry = store.load_record(record)
        except BadInput as exc:
            findings.append(Finding(record, DAMAGED_RECORD, exc.message))
            continue
        box = store.artifact_path(entry.key)
        label = str(entry.key)
        try:
            size = box.stat().st_size
            with reporter.transfer(f"verifying {entry.name} {entry.version}", size) as advance:
                digest = file_digests(box, ["sha256"], advance)["sha256"]
        except FileNotFoundError:
            findings.append(Finding(box, MISSING_BOX, f"{record.name} has no box beside it", label))
            continue
        except OSError as exc:
            findings.append(Finding(box, UNREADABLE, exc.strerror or str(exc), label))
            continue
        if digest != entry.sha256:
            findings.append(Finding(box, MISMATCH, f"expected {entry.sha256}, got {digest}", label))
        elif size != entry.size:
            findings.append(Finding(box, SIZE_MISMATCH, f"expected {entry.size} bytes, got {size}", label))
        else:
            findings.append(Finding(box, OK, entry.sha256, label))
    for box in store.artifact_paths():
        if box not in recorded:
            findings.append(Finding(box, NO_RECORD, "not in the catalog (never served)"))
    for part in store.part_paths():
        try:
            size = part.stat().st_size
        except FileNotFoundError:  # committed or discarded meanwhile
            continue
        findings.append(Finding(part, PARTIAL, f"{size} bytes; the next fetch resumes it"))
    return VerifyReport(store.root, findings)
