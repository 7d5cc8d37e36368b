"""`lab mirror image import`: images carried in as a file (the sneakernet case) into the mirror's image store.

Two formats (docs/field-notes.md §7), told apart by their members:
  - an OCI image layout as a tar (`oci-layout`, `index.json`, `blobs/sha256/<hex>`; also what `docker save`
    writes since Docker 25, beside its manifest.json): the manifests are taken as they are, so the images keep
    their digests; the names come from `io.containerd.image.name` or `org.opencontainers.image.ref.name`;
  - a classic `docker save` archive (`manifest.json`: `Config`, `RepoTags`, `Layers` by path; the config is
    named `<hex>.json` after its sha256; layers are plain tars or compressed): the OCI manifest is built from
    what is there, each layer's digest computed, and checked against the config's `rootfs.diff_ids`.

The archive may itself be compressed (gzip, bzip2, xz). Everything is planned and checked first (the
tag rule: a tag that names another image is replaced only with `force`), then each blob is copied into its
locked `.part`, hashed while it is copied and committed only when its sha256 is what the archive says; the
tags are written last, together. A malformed archive or a wrong blob is exit 2 naming the file and the member,
and the catalog stays as it was.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import posixpath
import tarfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from coreos_lab.errors import BadInput
from coreos_lab.fsutil import naming_io_errors
from coreos_lab.json_input import parse_json
from coreos_lab.mirror.checksums import CHUNK
from coreos_lab.mirror.images.manifests import (
    OCI_MANIFEST,
    Descriptor,
    ImageManifest,
    parse_descriptor,
    parse_manifest,
)
from coreos_lab.mirror.images.reference import DIGEST_RE, check_repository, check_tag, parse_reference
from coreos_lab.mirror.images.store import ALL_PLATFORMS, REF_NAME, ImageStore, StoredImage, Tally, sha256_digest
from coreos_lab.progress import Advance, Reporter, SilentReporter

OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
CONTAINERD_NAME = "io.containerd.image.name"  # the full reference Docker ≥ 25 writes beside ref.name (a tag)
# Layer compression, by leading bytes; an OCI layer's media type says which (`+gzip`, `+zstd`).
_LAYER_MAGIC = {b"\x1f\x8b": "+gzip", b"\x28\xb5\x2f\xfd": "+zstd"}
SMALL_LIMIT = 4 << 20  # manifests, indexes, configs and manifest.json are small; more is not one


@dataclass(frozen=True)
class ImportedImage:
    image: StoredImage
    action: str  # "added", "replaced" or "unchanged"

    def as_dict(self) -> dict[str, Any]:
        return {"action": self.action, "image": self.image.as_dict()}


@dataclass(frozen=True)
class ImageImportResult:
    archive: Path
    format: str  # "oci-layout" or "docker-save"
    images: list[ImportedImage]
    copied: Tally  # blobs (manifests, configs, layers) the import wrote to the store
    reused: Tally  # blobs the store held already

    def as_dict(self) -> dict[str, Any]:
        return {
            "archive": str(self.archive),
            "format": self.format,
            "images": [i.as_dict() for i in self.images],
            "copied": self.copied.as_dict(),
            "reused": self.reused.as_dict(),
        }


@dataclass
class _Blob:
    """A blob to copy: the descriptor it must match and the member holding it."""

    descriptor: Descriptor
    member: tarfile.TarInfo
    diff_id: str | None = None  # a docker-save layer: the sha256 of its uncompressed tar, from the config


@dataclass
class _Planned:
    repository: str
    tag: str
    descriptor: Descriptor  # the manifest or index the tag will name
    platforms: str = ALL_PLATFORMS
    action: str = "added"

    @property
    def name(self) -> str:
        return f"{self.repository}:{self.tag}"


@dataclass
class _Plan:
    format: str
    images: list[_Planned] = field(default_factory=list)
    blobs: dict[str, _Blob] = field(default_factory=dict)  # by digest: copied from the archive
    documents: dict[str, bytes] = field(default_factory=dict)  # by digest: manifests, read and verified (or built)


def import_archive(
    store: ImageStore,
    archive: Path,
    *,
    name: str | None = None,
    force: bool = False,
    reporter: Reporter | None = None,
) -> ImageImportResult:
    reporter = reporter or SilentReporter()
    override = _parse_name(name) if name is not None else None
    with naming_io_errors(), _open(archive) as tar:
        reader = _ArchiveReader(archive, tar)
        plan = _plan_oci_layout(reader, override) if reader.has("index.json") else _plan_docker_save(reader, override)
        _admit(store, plan, force)
        todo = [b for b in plan.blobs.values() if not store.has_blob(b.descriptor.digest)]
        todo.sort(key=lambda b: b.member.offset_data)  # in archive order: a compressed archive is read forwards
        with reporter.transfer(f"importing {archive.name}", sum(b.descriptor.size for b in todo)) as advance:
            for blob in todo:
                _copy_blob(store, reader, blob, advance, reporter)
    new_documents = {d: data for d, data in plan.documents.items() if not store.has_blob(d)}
    for digest, data in new_documents.items():
        with naming_io_errors(store.blob_path(digest)):
            store.write_blob(data, digest)
    everything = {d: b.descriptor.size for d, b in plan.blobs.items()} | {d: len(v) for d, v in plan.documents.items()}
    written = {b.descriptor.digest for b in todo} | set(new_documents)
    images = []
    for planned in plan.images:
        if planned.action == "unchanged":
            stored = store.lookup(planned.repository, planned.tag)
            assert stored is not None
            images.append(ImportedImage(stored, "unchanged"))
            continue
        with naming_io_errors():
            image = store.tag_image(
                planned.repository,
                planned.tag,
                planned.descriptor,
                source=str(archive.resolve()),
                platforms=planned.platforms,
            )
        images.append(ImportedImage(image, planned.action))
    return ImageImportResult(
        archive,
        plan.format,
        images,
        Tally(len(written), sum(everything[d] for d in written)),
        Tally(len(everything) - len(written), sum(size for d, size in everything.items() if d not in written)),
    )


def _parse_name(name: str) -> tuple[str, str]:
    repository, colon, tag = name.rpartition(":")
    if not colon or "/" in tag:
        raise BadInput(f"--name {name!r}: expected repository:tag, e.g. coreos/etcd:v3.5.16")
    return check_repository(repository, "repository in --name"), check_tag(tag, "tag in --name")


def _name_of(reference: str, where: str) -> tuple[str, str]:
    """repository and tag of a name an archive gives (`docker.io/coreos/etcd:v3.5.16`, `coreos/etcd:v1`)."""
    try:
        ref = parse_reference(reference)
    except BadInput as exc:
        raise BadInput(f"{where}: {exc.message}") from None
    if ref.tag is None:
        raise BadInput(f"{where}: {reference!r} names no tag")
    return ref.repository, ref.tag


@contextmanager
def _open(archive: Path) -> Iterator[tarfile.TarFile]:
    try:
        tar = tarfile.open(archive, "r:*")  # noqa: SIM115 (closed below)
    except FileNotFoundError:
        raise BadInput(f"{archive}: no such file") from None
    except (OSError, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError) as exc:
        raise BadInput(f"{archive} is not an image archive (a tar, or a compressed tar): {exc}") from None
    with tar:
        yield tar


# An image archive holds a few files per blob; a tar of a million empty members would be held in memory whole.
MAX_MEMBERS = 100_000
_READ_ERRORS = (OSError, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, KeyError)


class _MemberReader:
    """A member's bytes. Only failures of reading the archive become BadInput: an error of the caller's own
    work with the bytes (a full disk while writing them) stays what it is."""

    def __init__(self, reader: _ArchiveReader, member: tarfile.TarInfo, handle: IO[bytes]):
        self._reader = reader
        self._member = member
        self._handle = handle

    def read(self, size: int = -1) -> bytes:
        try:
            return self._handle.read(size)
        except _READ_ERRORS as exc:
            raise self._reader.unreadable(self._member, exc) from None


class _ArchiveReader:
    """The archive's members by their normalised path, read with errors that name the file and the member."""

    def __init__(self, archive: Path, tar: tarfile.TarFile):
        self.archive = archive
        self.tar = tar
        members: list[tarfile.TarInfo] = []
        try:
            # Every header is read: a truncated or damaged tar fails here.
            while (found := tar.next()) is not None:
                if len(members) == MAX_MEMBERS:
                    raise BadInput(f"{archive}: more than {MAX_MEMBERS} members: not an image archive")
                members.append(found)
        except (OSError, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError) as exc:
            raise BadInput(f"{archive}: damaged or truncated archive: {exc}") from None
        self.members = {posixpath.normpath(m.name).lstrip("/"): m for m in members}

    def has(self, name: str) -> bool:
        return name in self.members

    def member(self, name: str, why: str) -> tarfile.TarInfo:
        """The regular file `name` names, through symbolic and hard links (docker save links repeated layers)."""
        found = self.members.get(posixpath.normpath(name).lstrip("/"))
        if found is None:
            raise BadInput(f"{self.archive}: member {name} ({why}) is missing")
        for _ in range(16):
            if found.issym():
                target = posixpath.normpath(posixpath.join(posixpath.dirname(found.name), found.linkname))
            elif found.islnk():
                target = posixpath.normpath(found.linkname)
            else:
                break
            linked = self.members.get(target.lstrip("/"))
            if linked is None:
                raise BadInput(f"{self.archive}: member {name} ({why}) links to {target}, which is missing")
            found = linked
        if not found.isfile():
            raise BadInput(f"{self.archive}: member {name} ({why}) is not a file")
        return found

    def blob_member(self, digest: str, why: str) -> tarfile.TarInfo:
        return self.member(f"blobs/sha256/{digest.removeprefix('sha256:')}", why)

    @contextmanager
    def stream(self, member: tarfile.TarInfo) -> Iterator[_MemberReader]:
        try:
            handle = self.tar.extractfile(member)
        except _READ_ERRORS as exc:
            raise self.unreadable(member, exc) from None
        if handle is None:
            raise self.unreadable(member, "not a regular file")
        with handle:
            yield _MemberReader(self, member, handle)

    def unreadable(self, member: tarfile.TarInfo, why: object) -> BadInput:
        return BadInput(f"{self.archive}: member {member.name} cannot be read: {why}")

    def read_small(self, member: tarfile.TarInfo) -> bytes:
        if member.size > SMALL_LIMIT:
            raise BadInput(f"{self.archive}: member {member.name} has {member.size} bytes; too big for a manifest")
        with self.stream(member) as handle:
            data = handle.read()
        return data

    def read_verified(self, descriptor: Descriptor, why: str) -> bytes:
        """A small blob of an OCI layout, checked against its digest and size."""
        member = self.blob_member(descriptor.digest, why)
        data = self.read_small(member)
        actual = sha256_digest(data)
        if actual != descriptor.digest or len(data) != descriptor.size:
            raise BadInput(
                f"{self.archive}: member {member.name}: sha256 is {actual} ({len(data)} bytes), "
                f"expected {descriptor.digest} ({descriptor.size} bytes)"
            )
        return data

    def json(self, member: tarfile.TarInfo) -> Any:
        return parse_json(self.read_small(member), f"{self.archive}: member {member.name}")


# -- OCI image layout -------------------------------------------------------------------------------------


def _plan_oci_layout(reader: _ArchiveReader, override: tuple[str, str] | None) -> _Plan:
    where = f"{reader.archive}: member"
    layout = reader.json(reader.member("oci-layout", "the OCI layout marker"))
    if not isinstance(layout, dict) or not isinstance(layout.get("imageLayoutVersion"), str):
        raise BadInput(f"{where} oci-layout: field imageLayoutVersion is missing")
    index = reader.json(reader.member("index.json", "the layout's index"))
    entries = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(entries, list) or not entries:
        raise BadInput(f"{where} index.json: field manifests must be a non-empty list")
    descriptors = [parse_descriptor(e, f"{where} index.json: manifests[{i}]") for i, e in enumerate(entries)]
    if override is not None and len({d.digest for d in descriptors}) > 1:
        raise BadInput(f"{reader.archive} holds {len(descriptors)} images; --name names one image only")
    plan = _Plan("oci-layout")
    for i, descriptor in enumerate(descriptors):
        if override is not None:
            repository, tag = override
        else:
            repository, tag = _layout_name(reader, descriptor, f"{where} index.json: manifests[{i}]")
        platforms = _walk(reader, plan, descriptor, f"index.json manifests[{i}]")
        plan.images.append(_Planned(repository, tag, _bare(descriptor), platforms))
    return plan


def _layout_name(reader: _ArchiveReader, descriptor: Descriptor, where: str) -> tuple[str, str]:
    full = descriptor.annotations.get(CONTAINERD_NAME)
    if full:
        return _name_of(full, f"{where}.annotations[{CONTAINERD_NAME!r}]")
    ref_name = descriptor.annotations.get(REF_NAME)
    if ref_name and ("/" in ref_name or ":" in ref_name):
        return _name_of(ref_name, f"{where}.annotations[{REF_NAME!r}]")
    raise BadInput(
        f"{where}: no repository:tag for image {descriptor.digest} ({REF_NAME} is {ref_name!r})",
        hint="name it with --name repository:tag",
    )


def _bare(descriptor: Descriptor) -> Descriptor:
    return Descriptor(descriptor.media_type, descriptor.digest, descriptor.size)


def _walk(reader: _ArchiveReader, plan: _Plan, descriptor: Descriptor, why: str, in_index: bool = False) -> str:
    """Plan the blobs a manifest or index needs; the platforms present ("all", or those an index has here)."""
    data = reader.read_verified(descriptor, why)
    plan.documents[descriptor.digest] = data
    where = f"{reader.archive}: member {reader.blob_member(descriptor.digest, why).name}"
    parsed = parse_manifest(data, descriptor.media_type, where)
    if isinstance(parsed, ImageManifest):
        for i, blob in enumerate(parsed.blobs):
            what = "config" if i == 0 else f"layer {i}"
            member = reader.blob_member(blob.digest, f"the {what} of {descriptor.digest}")
            if member.size != blob.size:
                raise BadInput(
                    f"{reader.archive}: member {member.name} has {member.size} bytes, but the manifest "
                    f"{descriptor.digest} says {blob.size}"
                )
            plan.blobs[blob.digest] = _Blob(blob, member)
        return ALL_PLATFORMS
    if in_index:
        raise BadInput(f"{where}: an index inside an index is not supported")
    # A layout may hold only some platforms of an index (a one-platform fetch or copy): those present count.
    present = [m for m in parsed.manifests if reader.has(f"blobs/sha256/{m.digest.removeprefix('sha256:')}")]
    if not present:
        raise BadInput(f"{where}: none of the index's images is in the archive")
    for entry in present:
        _walk(reader, plan, entry, f"an image of index {descriptor.digest}", in_index=True)
    if len(present) == len(parsed.manifests):
        return ALL_PLATFORMS
    return ",".join(sorted(str(m.platform) for m in present if m.platform is not None))


# -- docker save ----------------------------------------------------------------------------------------


def _plan_docker_save(reader: _ArchiveReader, override: tuple[str, str] | None) -> _Plan:
    if not reader.has("manifest.json"):
        raise BadInput(
            f"{reader.archive} is neither an OCI image layout (oci-layout, index.json) "
            "nor a docker save archive (manifest.json)"
        )
    doc = reader.json(reader.member("manifest.json", "the archive's manifest"))
    where = f"{reader.archive}: member manifest.json"
    if not isinstance(doc, list) or not doc:
        raise BadInput(f"{where}: expected a non-empty list of images")
    if override is not None and len(doc) > 1:
        raise BadInput(f"{reader.archive} holds {len(doc)} images; --name names one image only")
    plan = _Plan("docker-save")
    for i, entry in enumerate(doc):
        at = f"{where}: [{i}]"
        if not isinstance(entry, dict):
            raise BadInput(f"{at}: expected an object with Config, RepoTags and Layers")
        config_name, layer_names, tags = entry.get("Config"), entry.get("Layers"), entry.get("RepoTags") or []
        if not isinstance(config_name, str) or not config_name:
            raise BadInput(f"{at}.Config: missing or not a file name ({config_name!r})")
        if not isinstance(layer_names, list) or not all(isinstance(n, str) and n for n in layer_names):
            raise BadInput(f"{at}.Layers: expected a list of file names, got {layer_names!r}")
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise BadInput(f"{at}.RepoTags: expected a list of names, got {tags!r}")
        names = [override] if override is not None else [_name_of(t, f"{at}.RepoTags") for t in tags]
        if not names:
            raise BadInput(f"{at}: the image has no RepoTags", hint="name it with --name repository:tag")
        manifest = _docker_save_manifest(reader, plan, config_name, layer_names)
        plan.images += [_Planned(repository, tag, manifest) for repository, tag in dict.fromkeys(names)]
    return plan


def _docker_save_manifest(reader: _ArchiveReader, plan: _Plan, config_name: str, layer_names: list[str]) -> Descriptor:
    """The OCI manifest of a docker-save image, built from its config (named after its sha256) and its layers;
    the manifest, the config and the layers go into the plan."""
    member = reader.member(config_name, "the image's config")
    config = reader.read_small(member)
    digest = sha256_digest(config)
    named = Path(config_name).name.removesuffix(".json")
    if DIGEST_RE.fullmatch(f"sha256:{named}") and f"sha256:{named}" != digest:
        raise BadInput(f"{reader.archive}: member {member.name}: sha256 is {digest}, but its name says sha256:{named}")
    try:
        diff_ids = parse_json(config, f"{reader.archive}: member {member.name}")["rootfs"]["diff_ids"]
        if not isinstance(diff_ids, list) or not all(isinstance(d, str) and DIGEST_RE.fullmatch(d) for d in diff_ids):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise BadInput(
            f"{reader.archive}: member {member.name}: field rootfs.diff_ids is missing or not digests"
        ) from None
    if len(diff_ids) != len(layer_names):
        raise BadInput(
            f"{reader.archive}: member {member.name} lists {len(diff_ids)} layers (rootfs.diff_ids), "
            f"manifest.json {len(layer_names)}"
        )
    config_descriptor = Descriptor(OCI_CONFIG, digest, len(config))
    plan.documents[digest] = config
    layers = []
    for name, diff_id in zip(layer_names, diff_ids, strict=True):
        layer_member = reader.member(name, f"a layer of {config_name}")
        with reader.stream(layer_member) as handle:
            head = handle.read(4)
        compression = next((kind for magic, kind in _LAYER_MAGIC.items() if head.startswith(magic)), "")
        # A plain tar's digest is its diff_id (checked while it is copied); a compressed layer's is unknown until
        # read: one hashing pass first, which checks the diff_id of what it decompresses to.
        layer_digest = _compressed_layer_digest(reader, layer_member, compression, diff_id) if compression else diff_id
        descriptor = Descriptor(OCI_LAYER + compression, layer_digest, layer_member.size)
        layers.append(descriptor)
        plan.blobs[layer_digest] = _Blob(descriptor, layer_member, diff_id)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config_descriptor.as_json(),
        "layers": [layer.as_json() for layer in layers],
    }
    data = json.dumps(manifest, indent=2).encode()
    plan.documents[sha256_digest(data)] = data
    return Descriptor(OCI_MANIFEST, sha256_digest(data), len(data))


def _compressed_layer_digest(reader: _ArchiveReader, member: tarfile.TarInfo, compression: str, diff_id: str) -> str:
    if compression != "+gzip":
        # Its diff_id could not be checked without a zstd decoder: refused rather than stored unchecked.
        raise BadInput(
            f"{reader.archive}: member {member.name} is a {compression.lstrip('+')} layer; only plain and gzip "
            "layers can be checked against the config's rootfs.diff_ids",
            hint="save the image with gzip layers, or as an OCI layout (its digests are kept as they are)",
        )
    blob = hashlib.sha256()
    uncompressed = hashlib.sha256()
    inflate = zlib.decompressobj(wbits=31)
    with reader.stream(member) as handle:
        while chunk := handle.read(CHUNK):
            blob.update(chunk)
            try:
                # At most CHUNK bytes out per call: a small layer that inflates hugely stays in bounded memory.
                while chunk:
                    uncompressed.update(inflate.decompress(chunk, CHUNK))
                    chunk = inflate.unconsumed_tail
            except zlib.error as exc:
                raise BadInput(f"{reader.archive}: member {member.name}: damaged gzip layer: {exc}") from None
    if f"sha256:{uncompressed.hexdigest()}" != diff_id:
        raise BadInput(
            f"{reader.archive}: member {member.name}: its uncompressed sha256 is sha256:{uncompressed.hexdigest()}, "
            f"but the config's rootfs.diff_ids says {diff_id}"
        )
    return f"sha256:{blob.hexdigest()}"


# -- the tag rule and the copy --------------------------------------------------------------------------


def _admit(store: ImageStore, plan: _Plan, force: bool) -> None:
    """Decide every tag before anything is written: the same image again is "unchanged"; a tag that names
    another image is "replaced" with `force`, else the import is refused."""
    for planned in plan.images:
        verdict, stored = store.admit(
            planned.repository, planned.tag, planned.descriptor.digest, force=force, offered="the archive has"
        )
        if verdict == "replaced":
            planned.action = "replaced"
        elif stored is not None and all(store.has_blob(d.digest) for d in store.required_blobs(stored.descriptor)):
            planned.action = "unchanged"
        # else "added": a free tag, or the same image with blobs missing from the store (put back)


def _copy_blob(store: ImageStore, reader: _ArchiveReader, blob: _Blob, advance: Advance, reporter: Reporter) -> None:
    digest = blob.descriptor.digest
    on_wait = lambda: reporter.note(f"waiting for another lab process writing blob {digest}")  # noqa: E731
    with store.staging(digest, on_wait) as part:
        if store.has_blob(digest):
            return
        part.seek(0)
        part.truncate()
        hasher = hashlib.sha256()
        try:
            with reader.stream(blob.member) as handle, naming_io_errors(Path(part.name)):
                while chunk := handle.read(CHUNK):
                    hasher.update(chunk)
                    part.write(chunk)
                    advance(len(chunk))
                part.flush()
            actual = f"sha256:{hasher.hexdigest()}"
            if actual != digest:
                expected = f"the config's rootfs.diff_ids says {blob.diff_id}" if blob.diff_id else f"expected {digest}"
                raise BadInput(f"{reader.archive}: member {blob.member.name}: sha256 is {actual}, {expected}")
            store.commit_blob(digest, Path(part.name))
        except BaseException:
            part.seek(0)
            part.truncate()  # an import is not resumable: leave no half copy behind
            raise
