"""The mirror store: a multi-version catalog of verified artifacts on disk, each of a kind (boxes today).

Layout under the mirror root (documented in boxes/README.md), for a box:

    <root>/<name>/<version>/<provider>-<arch>.box          the verified box, served as is
    <root>/<name>/<version>/<provider>-<arch>.record.json  its record: kind, key, size, sha256, source, added_at
    <root>/<name>/<version>/<provider>-<arch>.box.part     an interrupted download (resumable, never listed)
    <root>/<name>/<version>/upstream/                      upstream side files (JSON, DIGESTS, signatures)
    <root>/.discovery/                                     discovery service state

An artifact is part of the catalog only once its record exists, and the record is written (atomically) only
after the artifact's file is complete, verified and renamed into place. A crash at any point leaves either
nothing new, or a `.part` file that the next fetch resumes.

What the store knows of a kind is in its `ArtifactKind`: the suffix of its files and its key (the record fields
that name one artifact, and the file's stem in its version directory). Records name their kind; a record
without one is a box (written before there were kinds).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, astuple, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Literal

from coreos_lab.errors import BadInput, LabError
from coreos_lab.fsutil import atomic_write_text, locked_part

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# RubyGems version syntax, which Vagrant uses for box versions.
VERSION_RE = re.compile(r"^[0-9]+(\.[0-9A-Za-z]+)*(-[0-9A-Za-z.]+)?$")
PROVIDER_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
DEFAULT_ARCH = "amd64"
RECORD_SUFFIX = ".record.json"


def check_name(name: str, field: str = "name") -> str:
    if not NAME_RE.match(name or ""):
        raise BadInput(f"invalid box {field} {name!r}: use letters, digits, '.', '_' and '-' (e.g. flatcar-stable)")
    return name


def check_version(version: str, field: str = "version") -> str:
    if not VERSION_RE.match(version or ""):
        raise BadInput(f"invalid box {field} {version!r}: Vagrant needs a RubyGems version such as 3815.2.0")
    return version


def check_provider(provider: str, field: str = "provider") -> str:
    if not PROVIDER_RE.match(provider or ""):
        raise BadInput(f"invalid {field} {provider!r}: e.g. virtualbox, libvirt")
    return provider


def version_key(version: str) -> tuple[tuple[int, str, int], ...]:
    """Sort key in RubyGems order: numeric segments numerically, a letter segment marks a pre-release
    (sorts before the release it precedes): 1.0.rc1 < 1.0 < 1.0.1."""
    key = [(2, "", int(p)) if p.isdigit() else (0, p, 0) for p in re.split(r"[.-]", version)]
    key.append((1, "", 0))  # the end sorts after a pre-release segment, before a further number
    return tuple(key)


@dataclass(frozen=True)
class ArtifactKind:
    """One kind of artifact the store keeps. Adding a kind is adding its key class (name, version, the fields
    that tell its artifacts apart; `kind`, `stem`, `relpath`, `from_record`), its row in KINDS, and the key
    class to ArtifactKey."""

    name: str  # in records: "kind": "box"
    suffix: str  # of the artifact's file, `<stem><suffix>` in its version directory (`.part` added while written)
    key_type: type[ArtifactKey]


@dataclass(frozen=True)
class BoxKey:
    """A Vagrant box: one provider and architecture of one version of a box name."""

    name: str
    version: str
    provider: str
    architecture: str = DEFAULT_ARCH

    def __post_init__(self) -> None:
        check_name(self.name)
        check_version(self.version)
        check_provider(self.provider)
        check_provider(self.architecture, "architecture")

    @property
    def kind(self) -> ArtifactKind:
        return BOX

    @classmethod
    def from_record(cls, doc: dict[str, Any]) -> BoxKey:
        """The key a record names (records from before `architecture` existed are amd64)."""
        return cls(doc["name"], doc["version"], doc["provider"], doc.get("architecture", DEFAULT_ARCH))

    @property
    def stem(self) -> str:
        return f"{self.provider}-{self.architecture}"

    @property
    def relpath(self) -> str:
        """Path of the box below the root, with '/' separators; also its URL path below the base URL."""
        return f"{self.name}/{self.version}/{self.stem}{self.kind.suffix}"

    def __str__(self) -> str:
        return f"{self.name} {self.version} ({self.provider}, {self.architecture})"


ArtifactKey = BoxKey  # the key of any kind: a union once there is a second kind
BOX = ArtifactKind("box", ".box", BoxKey)
KINDS = {kind.name: kind for kind in (BOX,)}


@dataclass(frozen=True)
class CatalogEntry:
    """A verified artifact in the catalog."""

    key: ArtifactKey
    size: int
    sha256: str
    added_at: str
    source: str | None = None
    description: str | None = None

    @property
    def kind(self) -> ArtifactKind:
        return self.key.kind

    @property
    def name(self) -> str:
        return self.key.name

    @property
    def version(self) -> str:
        return self.key.version

    def url(self, base_url: str) -> str:
        """Where the server sends the artifact: its path below the root, below `base_url`."""
        return f"{base_url.rstrip('/')}/{self.key.relpath}"

    def as_dict(self, base_url: str | None = None) -> dict[str, Any]:
        doc: dict[str, Any] = {
            **asdict(self.key),
            "size": self.size,
            "sha256": self.sha256,
            "added_at": self.added_at,
            "source": self.source,
        }
        if base_url is not None:
            doc["metadata_url"] = metadata_url(self.name, base_url)
            doc[f"{self.kind.name}_url"] = self.url(base_url)
        return doc


@dataclass(frozen=True)
class Admission:
    """What writing an artifact under a key will do (see `MirrorStore.admit`)."""

    action: Literal["added", "unchanged", "replaced"]
    stored: CatalogEntry | None  # what the key holds now

    @property
    def unchanged(self) -> CatalogEntry | None:
        """The stored entry when it is the same artifact: nothing to write."""
        return self.stored if self.action == "unchanged" else None


def metadata_url(name: str, base_url: str) -> str:
    """Where the server answers Vagrant box metadata for `name` (also at `<name>.json`)."""
    return f"{base_url.rstrip('/')}/{name}"


class MirrorStore:
    def __init__(self, root: Path | str):
        self.root = Path(root)

    # -- paths -----------------------------------------------------------------------------------------
    def version_dir(self, name: str, version: str) -> Path:
        return self.root / check_name(name) / check_version(version)

    def upstream_dir(self, name: str, version: str) -> Path:
        return self.version_dir(name, version) / "upstream"

    def artifact_path(self, key: ArtifactKey) -> Path:
        return self.root / key.relpath

    def part_path(self, key: ArtifactKey) -> Path:
        final = self.artifact_path(key)
        return final.with_name(f"{final.name}.part")

    def record_path(self, key: ArtifactKey) -> Path:
        return self.version_dir(key.name, key.version) / f"{key.stem}{RECORD_SUFFIX}"

    # -- reading ---------------------------------------------------------------------------------------
    def entries(self, name: str | None = None, kind: ArtifactKind | None = None) -> list[CatalogEntry]:
        """Every verified artifact (of `kind`, when given), sorted by name, version (RubyGems order), then key."""
        found: list[CatalogEntry] = []
        if not self.root.is_dir():
            return found
        pattern = f"{name}/*/*{RECORD_SUFFIX}" if name else f"*/*/*{RECORD_SUFFIX}"
        for record in self.root.glob(pattern):
            if record.parts[-3].startswith("."):
                continue
            entry = self._read_record(record)
            if entry is not None and (kind is None or entry.kind == kind) and self.artifact_path(entry.key).is_file():
                found.append(entry)
        found.sort(key=lambda e: (e.name, version_key(e.version), e.kind.name, astuple(e.key)))
        return found

    def names(self, kind: ArtifactKind | None = None) -> list[str]:
        return sorted({e.name for e in self.entries(kind=kind)})

    def get(self, key: ArtifactKey) -> CatalogEntry | None:
        record = self.record_path(key)
        if not record.is_file() or not self.artifact_path(key).is_file():
            return None
        return self._read_record(record)

    def latest(self, name: str, provider: str | None = None) -> CatalogEntry | None:
        """The newest box named `name` (for `provider`, when given)."""
        candidates = [e for e in self.entries(name, BOX) if provider is None or e.key.provider == provider]
        return candidates[-1] if candidates else None

    def record_paths(self) -> list[Path]:
        """Every record file below the root, readable or not (for `verify`)."""
        if not self.root.is_dir():
            return []
        return sorted(r for r in self.root.glob(f"*/*/*{RECORD_SUFFIX}") if not r.parts[-3].startswith("."))

    def artifact_paths(self) -> list[Path]:
        """Every artifact file below the root, of every kind, recorded or not (for `verify`)."""
        return self._glob(*(f"*{kind.suffix}" for kind in KINDS.values()))

    def part_paths(self) -> list[Path]:
        """Interrupted downloads/imports: never part of the catalog."""
        return self._glob(*(f"*{kind.suffix}.part" for kind in KINDS.values()))

    def _glob(self, *patterns: str) -> list[Path]:
        """Files in the version directories matching any of `patterns` (never below a `.`-directory)."""
        if not self.root.is_dir():
            return []
        found = {p for pattern in patterns for p in self.root.glob(f"*/*/{pattern}")}
        return sorted(p for p in found if not p.parts[-3].startswith("."))

    def load_record(self, record: Path) -> CatalogEntry:
        """The entry a record describes; `BadInput` naming the record and the problem when it is damaged
        or does not describe the artifact beside it."""
        try:
            doc = json.loads(record.read_text())
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
            kind = KINDS.get(doc.get("kind", BOX.name))
            if kind is None:
                raise ValueError(f"unknown kind {doc['kind']!r} (known: {', '.join(KINDS)})")
            key = kind.key_type.from_record(doc)
            sha = str(doc["sha256"]).lower()
            if not re.fullmatch(r"[0-9a-f]{64}", sha):
                raise ValueError(f"sha256 {sha!r} is not a sha256 hex digest")
            entry = CatalogEntry(
                key=key,
                size=int(doc["size"]),
                sha256=sha,
                added_at=str(doc.get("added_at", "")),
                source=doc.get("source"),
                description=doc.get("description"),
            )
        except KeyError as exc:
            raise BadInput(f"damaged record {record}: field {exc.args[0]!r} is missing") from exc
        except (OSError, ValueError, TypeError, LabError) as exc:
            reason = exc.message if isinstance(exc, LabError) else str(exc)
            raise BadInput(f"damaged record {record}: {reason}") from exc
        if self.record_path(key) != record:
            raise BadInput(f"damaged record {record}: it describes {key}, which belongs at {self.record_path(key)}")
        return entry

    def _read_record(self, record: Path) -> CatalogEntry | None:
        try:
            return self.load_record(record)
        except BadInput:
            # A damaged record hides its artifact rather than breaking the whole catalog; `verify` reports it.
            return None

    # -- writing ---------------------------------------------------------------------------------------
    def staging(self, key: ArtifactKey, on_wait: Callable[[], None] | None = None) -> AbstractContextManager[BinaryIO]:
        """The key's `.part` file, open for reading and writing under an exclusive lock (`fsutil.locked_part`):
        two writers of the same artifact (two fetches, a fetch and an import) take turns instead of clobbering
        each other's `.part`; the second finds it committed or the part ready to resume. A refused write leaves
        no trace (an empty part is removed, with the directories only it had created)."""
        return locked_part(self.part_path(key), on_wait)

    def admit(self, key: ArtifactKey, *, force: bool, differs: Callable[[CatalogEntry], str | None]) -> Admission:
        """The rule of `lab mirror fetch` and `import`, decided (under the key's staging lock) before anything
        is written: a free key is "added"; when the key holds an artifact, `differs(stored)` says how the new
        one differs from it (None: the same one, "unchanged", nothing to do), and a different one is
        "replaced" only with `force`, else refused, naming the difference."""
        stored = self.get(key)
        if stored is None:
            return Admission("added", None)
        difference = differs(stored)
        if difference is None:
            return Admission("unchanged", stored)
        if not force:
            raise BadInput(
                f"{key} is already in the mirror with sha256 {stored.sha256}, {difference}",
                hint="use --force to replace it",
            )
        return Admission("replaced", stored)

    def commit(
        self,
        key: ArtifactKey,
        staged: Path,
        *,
        sha256: str,
        source: str | None = None,
        description: str | None = None,
    ) -> CatalogEntry:
        """Move a complete, verified file into the catalog and write its record (in that order).

        `staged` must be on the same filesystem (e.g. `part_path(key)`): the rename is atomic. The caller
        has already verified `sha256` and decided (`admit`) whether replacing a different artifact is allowed.
        """
        final = self.artifact_path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        size = staged.stat().st_size
        entry = CatalogEntry(
            key=key,
            size=size,
            sha256=sha256.lower(),
            added_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            source=source,
            description=description,
        )
        # Hide the old record first so a crash between the two steps never pairs a record with the wrong box.
        self.record_path(key).unlink(missing_ok=True)
        sync_file(staged)
        os.replace(staged, final)
        doc = {"kind": key.kind.name} | asdict(key) | {k: v for k, v in asdict(entry).items() if k != "key"}
        atomic_write_text(self.record_path(key), json.dumps(doc, indent=2) + "\n")
        return entry

    # -- Vagrant metadata ------------------------------------------------------------------------------
    def vagrant_metadata(self, name: str, base_url: str) -> dict[str, Any] | None:
        """Vagrant box metadata (docs/field-notes.md §1) for every stored version of `name`, urls absolute under
        `base_url`; None when the store has no such box."""
        entries = self.entries(check_name(name), BOX)
        if not entries:
            return None
        versions: dict[str, list[dict[str, Any]]] = {}
        for entry in entries:
            versions.setdefault(entry.version, []).append(
                {
                    "name": entry.key.provider,
                    "url": entry.url(base_url),
                    "checksum_type": "sha256",
                    "checksum": entry.sha256,
                    "architecture": entry.key.architecture,
                    "default_architecture": entry.key.architecture == DEFAULT_ARCH,
                }
            )
        description = next((e.description for e in reversed(entries) if e.description), None)
        return {
            "name": name,
            "description": description or f"{name}, served by coreos-lab",
            "versions": [{"version": v, "providers": p} for v, p in versions.items()],
        }


def sync_file(path: Path) -> None:
    """Flush a file's bytes to disk before it is renamed into place: after a power cut, a name in the store
    never stands for an empty or partial file."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
