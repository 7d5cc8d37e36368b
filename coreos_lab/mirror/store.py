"""The mirror store: a multi-version catalog of verified artifacts on disk, each of a kind (boxes today).

Layout under the mirror root (documented in boxes/README.md), for a box:

    <root>/<name>/<version>/<provider>-<arch>.box          the verified box, served as is
    <root>/<name>/<version>/<provider>-<arch>.record.json  its record: kind, key, size, sha256, source, added_at
    <root>/<name>/<version>/<provider>-<arch>.box.part     an interrupted download (resumable, never listed)
    <root>/<name>/<version>/upstream/                      upstream side files (JSON, DIGESTS, signatures)
    <root>/.discovery/                                     discovery service state

A Vagrant Cloud-style name `<org>/<name>` is one directory deeper: `<root>/<org>/<name>/<version>/…`.

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
from dataclasses import asdict, astuple, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Literal

from coreos_lab.errors import BadInput, LabError
from coreos_lab.fsutil import atomic_write_bytes, locked_part, naming_io_errors, write_temp
from coreos_lab.json_input import read_json_file

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# RubyGems version syntax, which Vagrant uses for box versions.
VERSION_RE = re.compile(r"^[0-9]+(\.[0-9A-Za-z]+)*(-[0-9A-Za-z.]+)?$")
PROVIDER_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
DEFAULT_ARCH = "amd64"
RECORD_SUFFIX = ".record.json"
IMAGES_DIR = "images"  # below the root, the image store's (mirror/images/store.py), never a box name
RECORD_LIMIT = 1 << 16  # a record is a few hundred bytes


# Each field names a directory or file below the root, whose names a filesystem allows up to 255 bytes; a
# record is written through `.<provider>-<arch>.record.json.<8 random>.tmp` (26 bytes more than the stem).
MAX_NAME_LENGTH = 128  # name, version
MAX_PART_LENGTH = 64  # provider, architecture


def check_name(name: str, field: str = "name") -> str:
    """A box name: `name`, or Vagrant Cloud's `org/name` (stored and served at `<org>/<name>`). Each part is one
    directory name of the same rules; nothing else may hold a '/'."""
    parts = (name or "").split("/")
    if len(parts) > 2 or not all(NAME_RE.fullmatch(part) for part in parts):
        # fullmatch: `$` alone would let a trailing newline through
        raise BadInput(
            f"invalid box {field} {name!r}: use letters, digits, '.', '_' and '-', with at most one '/' "
            "between an organisation and a name (e.g. flatcar-stable, bento/debian-12)"
        )
    if parts[0] == IMAGES_DIR:
        raise BadInput(f"invalid box {field} {name!r}: the mirror keeps its container images there")
    for part in parts:
        _check_length(part, f"box {field}", MAX_NAME_LENGTH)
    return name


def check_version(version: str, field: str = "version") -> str:
    if not VERSION_RE.fullmatch(version or ""):
        raise BadInput(f"invalid box {field} {version!r}: Vagrant needs a RubyGems version such as 3815.2.0")
    return _check_length(version, f"box {field}", MAX_NAME_LENGTH)


def check_provider(provider: str, field: str = "provider") -> str:
    if not PROVIDER_RE.fullmatch(provider or ""):
        raise BadInput(f"invalid {field} {provider!r}: e.g. virtualbox, libvirt")
    return _check_length(provider, field, MAX_PART_LENGTH)


def is_valid_name(name: str) -> bool:
    try:
        check_name(name)
    except BadInput:
        return False
    return True


def _check_length(value: str, field: str, limit: int) -> str:
    if len(value) > limit:
        raise BadInput(f"invalid {field} {value[:32]!r}… ({len(value)} characters): at most {limit}")
    return value


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


OUTSIDE_ROOT = "a symlink leading out of the mirror root (never served)"


@dataclass(frozen=True)
class LeftOut:
    """Something the catalog leaves out, and why."""

    path: Path
    reason: str


@dataclass
class Scan:
    """The files found in the store's version directories, and the directories that could not be read."""

    files: list[Path] = field(default_factory=list)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)

    def listdir(self, directory: Path) -> list[Path]:
        try:
            return sorted(directory.iterdir())
        except OSError as exc:
            self.unreadable.append((directory, exc.strerror or str(exc)))
            return []

    @property
    def records(self) -> list[Path]:
        return [f for f in self.files if f.name.endswith(RECORD_SUFFIX)]

    @property
    def artifacts(self) -> list[Path]:
        return [f for f in self.files if f.name.endswith(tuple(kind.suffix for kind in KINDS.values()))]

    @property
    def parts(self) -> list[Path]:
        return [f for f in self.files if f.name.endswith(tuple(f"{kind.suffix}.part" for kind in KINDS.values()))]


class MirrorStore:
    def __init__(self, root: Path | str):
        self.root = Path(root)

    # -- paths -----------------------------------------------------------------------------------------
    def version_dir(self, name: str, version: str) -> Path:
        return self.root / check_name(name) / check_version(version)

    def upstream_dir(self, name: str, version: str) -> Path:
        return self.version_dir(name, version) / "upstream"

    def keep_upstream_files(self, name: str, version: str, directory: Path) -> None:
        """Keep the release's side files fetched into `directory` (DIGESTS, signatures, …) beside the version; call
        it before the box's commit, so the box becomes visible last."""
        for source in sorted(directory.iterdir()):
            kept = self.upstream_dir(name, version) / source.name
            with naming_io_errors(kept):
                atomic_write_bytes(kept, source.read_bytes())

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
        return self.survey(name, kind)[0]

    def survey(
        self, name: str | None = None, kind: ArtifactKind | None = None
    ) -> tuple[list[CatalogEntry], list[LeftOut]]:
        """The catalog (as `entries`), and what it leaves out that a user must hear of: directories that cannot
        be read, damaged records, recorded artifacts that are missing or lead out of the root (`list`)."""
        found: list[CatalogEntry] = []
        if name is not None and not is_valid_name(name):
            return found, []  # a name that cannot be stored names nothing
        scan = self.scan(name)
        left_out = [LeftOut(d, f"cannot read the directory: {why}") for d, why in scan.unreadable]
        for record in scan.records:
            try:
                entry = self.load_record(record)
            except BadInput as exc:
                left_out.append(LeftOut(record, exc.message))
                continue
            if kind is not None and entry.kind != kind:
                continue
            artifact = self.artifact_path(entry.key)
            if not artifact.is_file():
                left_out.append(LeftOut(artifact, f"{record.name} has no {entry.kind.name} beside it"))
            elif not self.within_root(artifact):
                left_out.append(LeftOut(artifact, OUTSIDE_ROOT))
            else:
                found.append(entry)
        found.sort(key=lambda e: (e.name, version_key(e.version), e.kind.name, astuple(e.key)))
        return found, left_out

    def names(self, kind: ArtifactKind | None = None) -> list[str]:
        return sorted({e.name for e in self.entries(kind=kind)})

    def get(self, key: ArtifactKey) -> CatalogEntry | None:
        record, artifact = self.record_path(key), self.artifact_path(key)
        if not record.is_file() or not artifact.is_file() or not self.within_root(artifact):
            return None
        return self._read_record(record)

    def latest(self, name: str, provider: str | None = None) -> CatalogEntry | None:
        """The newest box named `name` (for `provider`, when given)."""
        candidates = [e for e in self.entries(name, BOX) if provider is None or e.key.provider == provider]
        return candidates[-1] if candidates else None

    def within_root(self, path: Path) -> bool:
        """Whether `path` exists and, with every symlink resolved, lies inside the root: the server sends
        nothing else, so nothing else is listed, verified or advertised."""
        try:
            return path.resolve(strict=True).is_relative_to(self.root.resolve())
        except (OSError, RuntimeError):  # missing, unreadable, a symlink loop
            return False

    def scan(self, name: str | None = None) -> Scan:
        """The files in the version directories (of `name`, when given; never below a `.`-directory), and
        the directories on the way that could not be read: a catalog never silently shrinks."""
        scan = Scan()
        if not self.root.is_dir():
            return scan
        if name is None:
            name_dirs = [d for d in scan.listdir(self.root) if d.is_dir() and is_valid_name(d.name)]
        else:
            name_dirs = [self.root / name] if (self.root / name).is_dir() else []
        for name_dir in name_dirs:
            for version_dir in (d for d in scan.listdir(name_dir) if d.is_dir()):
                found = scan.listdir(version_dir)
                scan.files += (f for f in found if not f.is_dir())
                if name is None:
                    # `<org>/<name>/<version>/`: below an org's name, version directories (a version starts with a
                    # digit; the `upstream/` below a plain name's version never does)
                    for org_version in (d for d in found if d.is_dir() and VERSION_RE.fullmatch(d.name)):
                        scan.files += (f for f in scan.listdir(org_version) if not f.is_dir())
        return scan

    def record_paths(self) -> list[Path]:
        """Every record file below the root, readable or not (for `verify`)."""
        return self.scan().records

    def artifact_paths(self) -> list[Path]:
        """Every artifact file below the root, of every kind, recorded or not (for `verify`)."""
        return self.scan().artifacts

    def part_paths(self) -> list[Path]:
        """Interrupted downloads/imports: never part of the catalog."""
        return self.scan().parts

    def load_record(self, record: Path) -> CatalogEntry:
        """The entry a record describes; `BadInput` naming the record and the problem when it is damaged
        or does not describe the artifact beside it."""
        doc = read_json_file(record, f"damaged record {record}", max_bytes=RECORD_LIMIT)
        try:
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
        except (ValueError, TypeError, LabError) as exc:
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
        final, record = self.artifact_path(key), self.record_path(key)
        size = staged.stat().st_size
        entry = CatalogEntry(
            key=key,
            size=size,
            sha256=sha256.lower(),
            added_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            source=source,
            description=description,
        )
        doc = {"kind": key.kind.name} | asdict(key) | {k: v for k, v in asdict(entry).items() if k != "key"}
        # The record is written beside its place first: a full disk or a read-only root fails here, with the
        # store as it was. What follows are renames.
        with naming_io_errors(record):
            record_temp = write_temp(record, (json.dumps(doc, indent=2) + "\n").encode())
        try:
            with naming_io_errors(final):
                # Hide the old record first so a crash between the renames never pairs a record with the wrong box.
                record.unlink(missing_ok=True)
                sync_file(staged)
                os.replace(staged, final)
            try:
                with naming_io_errors(record):
                    os.replace(record_temp, record)
            except BaseException:
                os.replace(final, staged)  # back to the caller, who discards it: no box without a record
                raise
        finally:
            record_temp.unlink(missing_ok=True)
        return entry

    # -- Vagrant metadata ------------------------------------------------------------------------------
    def vagrant_metadata(self, name: str, base_url: str) -> dict[str, Any] | None:
        """Vagrant box metadata (docs/field-notes.md §1) for every stored version of `name`, urls absolute under
        `base_url`; None when the store has no such box."""
        entries = self.entries(name, BOX)
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
                }
            )
        for providers in versions.values():
            mark_default_architectures(providers)
        description = next((e.description for e in reversed(entries) if e.description), None)
        return {
            "name": name,
            "description": description or f"{name}, served by coreos-lab",
            "versions": [{"version": v, "providers": p} for v, p in versions.items()],
        }


def mark_default_architectures(providers: list[dict[str, Any]]) -> None:
    """Give each provider name exactly one `default_architecture: true` (amd64 when there is one, else the first),
    and put that entry last among its name's. Vagrant >= 2.4 picks the host's architecture and falls back to the
    default one; Vagrant 2.3 ignores `architecture` and keeps the last entry of a provider name (it builds a Hash
    from the list), so the default must come last for 2.3 to get the same box (docs/field-notes.md §1)."""
    by_name: dict[str, list[dict[str, Any]]] = {}
    for provider in providers:
        by_name.setdefault(provider["name"], []).append(provider)
    for same in by_name.values():
        default = next((p for p in same if p["architecture"] == DEFAULT_ARCH), same[0])
        for provider in same:
            provider["default_architecture"] = provider is default
    providers.sort(key=lambda p: (list(by_name).index(p["name"]), p["default_architecture"]))


def sync_file(path: Path) -> None:
    """Flush a file's bytes to disk before it is renamed into place: after a power cut, a name in the store
    never stands for an empty or partial file."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
