"""The mirror's container images: an OCI image layout at `<mirror root>/images/` (docs/field-notes.md §7).

    images/oci-layout                   {"imageLayoutVersion": "1.0.0"}
    images/index.json                   the catalog: one descriptor per repository:tag
    images/blobs/sha256/<hex>           every blob (indexes, manifests, configs, layers) once, shared by all images
    images/blobs/sha256/<hex>.part      a blob being written (resumable, never served or listed)

Standard tools read it as it is (`skopeo inspect oci:<root>/images:coreos/etcd:v3.5.16`): each catalog entry's
`org.opencontainers.image.ref.name` is the image's `repository:tag`. A blob is committed only once its sha256
is its name, and a tag is added to index.json only after every blob it needs is committed; index.json is
rewritten atomically, writers taking turns under a lock. So a crash leaves at most unreferenced blobs or a
`.part` that the next fetch resumes, and nothing a reader can see is ever incomplete.

A fetch for one platform keeps the upstream index (so the image keeps its digest, and a pull pinned by digest
works) with only that platform's manifest and blobs: `platforms` in the entry says which are present.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Literal

from coreos_lab.errors import BadInput, LabError
from coreos_lab.fsutil import atomic_write_bytes, atomic_write_text, locked_part, naming_io_errors
from coreos_lab.json_input import read_json_file
from coreos_lab.mirror.images.manifests import (
    MANIFEST_MEDIA_TYPES,
    Descriptor,
    ImageIndex,
    ImageManifest,
    parse_descriptor,
    parse_manifest,
)
from coreos_lab.mirror.images.reference import DIGEST_RE, check_digest, check_repository, check_tag
from coreos_lab.mirror.store import IMAGES_DIR, sync_file

LAYOUT_VERSION = {"imageLayoutVersion": "1.0.0"}
REF_NAME = "org.opencontainers.image.ref.name"
SOURCE = "org.coreos-lab.source"
ADDED_AT = "org.coreos-lab.added-at"
PLATFORMS = "org.coreos-lab.platforms"
ALL_PLATFORMS = "all"
MAX_INDEX_NESTING = 8  # an index of indexes is allowed (OCI); real images nest one or two deep
SMALL_BLOB_LIMIT = 4 << 20  # the distribution spec's limit on a manifest registries must accept


def sha256_digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


@dataclass(frozen=True)
class Tally:
    """A count of blobs and their bytes (written, or found in the store already)."""

    blobs: int = 0
    bytes: int = 0

    def __add__(self, other: Tally) -> Tally:
        return Tally(self.blobs + other.blobs, self.bytes + other.bytes)

    def as_dict(self) -> dict[str, int]:
        return {"blobs": self.blobs, "bytes": self.bytes}


@dataclass(frozen=True)
class StoredImage:
    """One repository:tag in the catalog and the manifest (or index) it names."""

    repository: str
    tag: str
    descriptor: Descriptor
    source: str | None
    added_at: str
    platforms: str  # "all", or the platforms fetched from an index, comma-separated

    @property
    def name(self) -> str:
        return f"{self.repository}:{self.tag}"

    @property
    def digest(self) -> str:
        return self.descriptor.digest

    def as_dict(self) -> dict[str, Any]:
        return {
            "repository": self.repository,
            "tag": self.tag,
            "digest": self.digest,
            "media_type": self.descriptor.media_type,
            "size": self.descriptor.size,
            "platforms": self.platforms,
            "source": self.source,
            "added_at": self.added_at,
        }


class ImageStore:
    def __init__(self, mirror_root: Path | str):
        self.dir = Path(mirror_root) / IMAGES_DIR

    # -- blobs -----------------------------------------------------------------------------------------
    def blob_path(self, digest: str) -> Path:
        algorithm, _, hexdigest = check_digest(digest).partition(":")
        return self.dir / "blobs" / algorithm / hexdigest

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def read_blob(self, digest: str) -> bytes:
        return self.blob_path(digest).read_bytes()

    def read_small_blob(self, digest: str) -> bytes:
        """A blob that must be small (a manifest, an index): one of more than SMALL_BLOB_LIMIT bytes is refused
        rather than read into memory."""
        with self.blob_path(digest).open("rb") as handle:
            data = handle.read(SMALL_BLOB_LIMIT + 1)
        if len(data) > SMALL_BLOB_LIMIT:
            raise BadInput(f"blob {digest} has more than {SMALL_BLOB_LIMIT} bytes: not a manifest or config")
        return data

    @property
    def blobs_dir(self) -> Path:
        return self.dir / "blobs" / "sha256"

    def blob_paths(self) -> list[Path]:
        """Every committed blob file (for `verify`); an OSError naming the directory when it cannot be listed."""
        found = self.blobs_dir
        if not found.is_dir():
            return []
        return sorted(p for p in found.iterdir() if DIGEST_RE.fullmatch(f"sha256:{p.name}"))

    def within_blobs(self, path: Path) -> bool:
        """Whether `path`, with every symlink resolved, lies in the blob directory: the registry serves
        nothing else."""
        try:
            return path.resolve(strict=True).is_relative_to(self.blobs_dir.resolve())
        except (OSError, RuntimeError):
            return False

    def part_paths(self) -> list[Path]:
        try:
            return sorted(self.blobs_dir.glob("*.part")) if self.blobs_dir.is_dir() else []
        except OSError:  # an unreadable blob directory: `blob_paths` says so
            return []

    def staging(self, digest: str, on_wait: Callable[[], None] | None = None) -> AbstractContextManager[BinaryIO]:
        """The blob's `.part`, open under an exclusive lock (see `fsutil.locked_part`): two fetches of a blob
        that two images share take turns; the second finds it committed (check `has_blob`) or resumes it."""
        path = self.blob_path(digest)
        return locked_part(path.with_name(f"{path.name}.part"), on_wait)

    def commit_blob(self, digest: str, staged: Path) -> Path:
        """Move a complete blob whose sha256 the caller verified to its content address (atomic rename)."""
        final = self.blob_path(digest)
        sync_file(staged)
        os.replace(staged, final)
        return final

    def write_blob(self, data: bytes, digest: str | None = None) -> str:
        """Store a small blob (a manifest, a config) from memory; `digest`, when given, must be its digest."""
        actual = sha256_digest(data)
        if digest is not None and digest != actual:
            raise LabError(f"blob {digest} does not match its content (sha256 is {actual.partition(':')[2]})")
        if not self.has_blob(actual):
            atomic_write_bytes(self.blob_path(actual), data)
        return actual

    # -- the catalog -----------------------------------------------------------------------------------
    def images(self, repository: str | None = None) -> list[StoredImage]:
        """Every tagged image (of `repository`, when given), sorted by repository and tag."""
        found = [i for i in self._read_index() if repository is None or i.repository == repository]
        return sorted(found, key=lambda i: (i.repository, i.tag))

    def lookup(self, repository: str, tag: str) -> StoredImage | None:
        return next((i for i in self._read_index() if (i.repository, i.tag) == (repository, tag)), None)

    def lookup_manifest(self, repository: str, reference: str) -> Descriptor | None:
        """The manifest or index a registry answers for `repository` at `reference` (a tag, or the digest of
        any manifest the repository's images hold), when its blob is present."""
        if DIGEST_RE.fullmatch(reference):
            for image in self.images(repository):
                found = self._find_manifest(image.descriptor, reference)
                if found is not None:
                    return found
            return None
        tagged = self.lookup(repository, reference)
        return tagged.descriptor if tagged is not None and self.has_blob(tagged.digest) else None

    def repositories(self) -> list[str]:
        return sorted({i.repository for i in self._read_index()})

    def manifest(self, descriptor: Descriptor) -> ImageManifest | ImageIndex:
        """The stored manifest or index a descriptor names."""
        data = self.read_small_blob(descriptor.digest)
        return parse_manifest(data, descriptor.media_type, f"blob {descriptor.digest}")

    def required_blobs(self, descriptor: Descriptor, nesting: int = 0) -> list[Descriptor]:
        """The blobs an image needs, the manifest itself first: for an index, the index and what its entries
        that are present need (a one-platform fetch leaves the others out on purpose)."""
        needed = [descriptor]
        if not self.has_blob(descriptor.digest):
            return needed
        parsed = self.manifest(descriptor)
        if isinstance(parsed, ImageManifest):
            return needed + list(parsed.blobs)
        if nesting >= MAX_INDEX_NESTING:
            raise BadInput(f"blob {descriptor.digest}: indexes nest more than {MAX_INDEX_NESTING} levels deep")
        for entry in parsed.manifests:
            if self.has_blob(entry.digest):
                needed += self.required_blobs(entry, nesting + 1)
        return needed

    def admit(
        self, repository: str, tag: str, digest: str, *, force: bool, offered: str
    ) -> tuple[Literal["added", "same", "replaced"], StoredImage | None]:
        """The rule of image fetch and import (MirrorStore.admit's for boxes), decided before anything is written:
        a free tag is "added"; one naming this digest is "same" (what is left to do is the caller's); one naming
        another image is "replaced" only with `force`, else refused. `offered` says where `digest` comes from
        ("quay.io/coreos/etcd:v3.5.16 is now", "the archive has")."""
        stored = self.lookup(repository, tag)
        if stored is None:
            return "added", None
        if stored.digest == digest:
            return "same", stored
        if not force:
            raise BadInput(
                f"{stored.name} is already in the mirror as {stored.digest} (from {stored.source}), "
                f"but {offered} {digest}",
                hint="use --force to replace it",
            )
        return "replaced", stored

    def tag_image(
        self, repository: str, tag: str, descriptor: Descriptor, *, source: str | None, platforms: str
    ) -> StoredImage:
        """Point `repository:tag` at a manifest whose blobs are all committed (replacing what it named)."""
        check_repository(repository)
        check_tag(tag)
        if descriptor.media_type not in MANIFEST_MEDIA_TYPES:
            raise BadInput(f"{repository}:{tag}: {descriptor.media_type!r} is not a manifest media type")
        missing = [d.digest for d in self.required_blobs(descriptor) if not self.has_blob(d.digest)]
        if missing:
            raise LabError(f"cannot tag {repository}:{tag}: blobs missing from the store: {', '.join(missing)}")
        image = StoredImage(
            repository, tag, descriptor, source, datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), platforms
        )
        with self._index_lock():
            try:
                stored = self.load_index()  # not _read_index: rewriting a damaged catalog would empty it
            except BadInput as exc:
                raise BadInput(exc.message, hint="run lab mirror verify") from None
            entries = [i for i in stored if (i.repository, i.tag) != (repository, tag)]
            self._write_index([*entries, image])
        return image

    # -- index.json ------------------------------------------------------------------------------------
    @property
    def index_path(self) -> Path:
        return self.dir / "index.json"

    @contextmanager
    def _index_lock(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".lock", "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            yield

    def load_index(self) -> list[StoredImage]:
        """The catalog; BadInput naming index.json and the entry when it is damaged (for `verify`)."""
        where = str(self.index_path)
        try:
            if not self.index_path.is_file():
                return []
        except OSError as exc:  # the images directory cannot be searched
            raise BadInput(f"unreadable image catalog {where}: {exc.strerror}") from None
        doc = read_json_file(self.index_path, f"damaged image catalog {where}")
        if not isinstance(doc, dict) or not isinstance(doc.get("manifests"), list):
            raise BadInput(f"damaged image catalog {where}: expected an OCI index with a manifests list")
        found = []
        for i, entry in enumerate(doc["manifests"]):
            descriptor = parse_descriptor(entry, f"{where}: manifests[{i}]")
            name = descriptor.annotations.get(REF_NAME, "")
            repository, _, tag = name.rpartition(":")
            try:
                check_repository(repository, f"repository in manifests[{i}].annotations")
                check_tag(tag, f"tag in manifests[{i}].annotations")
            except BadInput as exc:
                raise BadInput(f"damaged image catalog {where}: {exc.message}") from None
            found.append(
                StoredImage(
                    repository,
                    tag,
                    descriptor,
                    descriptor.annotations.get(SOURCE),
                    descriptor.annotations.get(ADDED_AT, ""),
                    descriptor.annotations.get(PLATFORMS, ALL_PLATFORMS),
                )
            )
        return found

    def _read_index(self) -> list[StoredImage]:
        try:
            return self.load_index()
        except BadInput:
            return []  # a damaged catalog hides the images rather than breaking the mirror; `verify` reports it

    def _write_index(self, images: list[StoredImage]) -> None:
        manifests = []
        for image in sorted(images, key=lambda i: (i.repository, i.tag)):
            doc = image.descriptor.as_json()
            doc["annotations"] = {
                REF_NAME: image.name,
                ADDED_AT: image.added_at,
                PLATFORMS: image.platforms,
                **({SOURCE: image.source} if image.source else {}),
            }
            manifests.append(doc)
        layout = self.dir / "oci-layout"
        if not layout.is_file():
            atomic_write_text(layout, json.dumps(LAYOUT_VERSION) + "\n")
        index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests}
        with naming_io_errors(self.index_path):
            atomic_write_text(self.index_path, json.dumps(index, indent=2) + "\n")

    def _find_manifest(self, descriptor: Descriptor, digest: str, nesting: int = 0) -> Descriptor | None:
        if not self.has_blob(descriptor.digest):
            return None
        if descriptor.digest == digest:
            return descriptor
        parsed = self.manifest(descriptor)
        if isinstance(parsed, ImageIndex) and nesting < MAX_INDEX_NESTING:
            for entry in parsed.manifests:
                found = self._find_manifest(entry, digest, nesting + 1)
                if found is not None:
                    return found
        return None
