"""Image manifests and indexes: the OCI image spec's and Docker's schema 2, read as one model.

An image is a manifest (a config blob and layer blobs); a multi-platform image is an index (a Docker "manifest
list") of manifests, one per platform. Both formats use the same descriptor (`mediaType`, `digest`, `size`,
and `platform` in an index), so one parser reads all four media types (docs/field-notes.md §7). Docker's
schema 1 (signed, 2016) is refused: no registry serves the etcd images only in it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from coreos_lab.errors import BadInput
from coreos_lab.json_input import parse_json
from coreos_lab.mirror.images.reference import DIGEST_RE

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
INDEX_MEDIA_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)
IMAGE_MEDIA_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
# What a client asks for (Accept), and what a manifest may be.
MANIFEST_MEDIA_TYPES = (*IMAGE_MEDIA_TYPES, *INDEX_MEDIA_TYPES)
DEFAULT_PLATFORM = "linux/amd64"  # the guests' platform: Flatcar's Vagrant boxes are amd64 only


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    def matches(self, other: Platform | None) -> bool:
        """Whether an index entry's platform is this one; arm64 without a variant is arm64/v8."""
        if other is None:
            return False
        if (self.os, self.architecture) != (other.os, other.architecture):
            return False
        if self.variant is None:
            return True
        default = "v8" if self.architecture == "arm64" else None
        return self.variant == (other.variant or default)

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


def parse_platform(text: str) -> Platform:
    parts = text.split("/") if isinstance(text, str) else []
    if len(parts) not in (2, 3) or not all(parts):
        raise BadInput(f"invalid platform {text!r}: expected os/architecture[/variant], e.g. linux/amd64")
    return Platform(*parts)


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    annotations: dict[str, str] = field(default_factory=dict, compare=False)

    def as_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.annotations:
            doc["annotations"] = dict(self.annotations)
        return doc


@dataclass(frozen=True)
class ImageManifest:
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]

    @property
    def blobs(self) -> tuple[Descriptor, ...]:
        return (self.config, *self.layers)


@dataclass(frozen=True)
class ImageIndex:
    media_type: str
    manifests: tuple[Descriptor, ...]

    def for_platform(self, platform: Platform) -> Descriptor | None:
        return next((m for m in self.manifests if platform.matches(m.platform)), None)


def parse_descriptor(doc: Any, where: str) -> Descriptor:
    if not isinstance(doc, dict):
        raise BadInput(f"{where}: a descriptor must be a JSON object, not {type(doc).__name__}")
    media_type, digest, size = doc.get("mediaType"), doc.get("digest"), doc.get("size")
    if not isinstance(media_type, str) or not media_type:
        raise BadInput(f"{where}.mediaType: missing or not a string ({media_type!r})")
    if not isinstance(digest, str) or not DIGEST_RE.fullmatch(digest):
        raise BadInput(f"{where}.digest: {digest!r} is not a sha256 digest (sha256:<64 hex digits>)")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise BadInput(f"{where}.size: {size!r} is not a size in bytes")
    platform = None
    if isinstance(doc.get("platform"), dict):
        p = doc["platform"]
        if not isinstance(p.get("os"), str) or not isinstance(p.get("architecture"), str):
            raise BadInput(f"{where}.platform: needs string os and architecture, got {p!r}")
        variant = p.get("variant")
        platform = Platform(p["os"], p["architecture"], variant if isinstance(variant, str) and variant else None)
    annotations = doc.get("annotations")
    labels = {str(k): str(v) for k, v in annotations.items()} if isinstance(annotations, dict) else {}
    return Descriptor(media_type, digest, size, platform, labels)


def parse_manifest(data: bytes, media_type: str | None, where: str) -> ImageManifest | ImageIndex:
    """The manifest or index in `data`; `media_type` is what the registry (or the store) said it is, the
    document's own `mediaType` wins. BadInput names `where` (a URL or file) and the field."""
    doc = parse_json(data, where, "the manifest")
    if not isinstance(doc, dict):
        raise BadInput(f"{where}: the manifest is not a JSON object")
    if doc.get("schemaVersion") != 2:
        raise BadInput(
            f"{where}: schemaVersion {doc.get('schemaVersion')!r} is not supported (only schema 2 / OCI images)"
        )
    kind = doc.get("mediaType") or media_type or ""
    if not kind:  # OCI allows leaving it out; the shape tells
        kind = OCI_INDEX if "manifests" in doc else OCI_MANIFEST
    if kind in INDEX_MEDIA_TYPES:
        entries = doc.get("manifests")
        if not isinstance(entries, list):
            raise BadInput(f"{where}: manifests must be a list")
        return ImageIndex(kind, tuple(parse_descriptor(m, f"{where}: manifests[{i}]") for i, m in enumerate(entries)))
    if kind in IMAGE_MEDIA_TYPES:
        layers = doc.get("layers")
        if not isinstance(layers, list):
            raise BadInput(f"{where}: layers must be a list")
        return ImageManifest(
            kind,
            parse_descriptor(doc.get("config"), f"{where}: config"),
            tuple(parse_descriptor(layer, f"{where}: layers[{i}]") for i, layer in enumerate(layers)),
        )
    raise BadInput(
        f"{where}: media type {kind!r} is not an image manifest or index ({', '.join(MANIFEST_MEDIA_TYPES)})"
    )
