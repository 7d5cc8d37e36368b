"""Small but real container images written straight into the mirror's image store (`ImageStore`), for the
registry tests: gzipped tar layers of random bytes, a config whose diff_ids are the layers' (so Docker can
unpack them), OCI or Docker media types, and multi-platform indexes of which the store may hold only some
platforms (what a one-platform fetch leaves)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass, field

from coreos_lab.mirror.images.manifests import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    parse_platform,
)
from coreos_lab.mirror.images.store import ALL_PLATFORMS, ImageStore, sha256_digest

MEDIA_TYPES = {
    # manifest: (config, layer, index)
    OCI_MANIFEST: (
        "application/vnd.oci.image.config.v1+json",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        OCI_INDEX,
    ),
    DOCKER_MANIFEST: (
        "application/vnd.docker.container.image.v1+json",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        DOCKER_MANIFEST_LIST,
    ),
}


@dataclass
class Built:
    """What was written: the tagged descriptor, each platform's manifest descriptor, every blob's bytes."""

    descriptor: Descriptor
    manifests: dict[str, Descriptor] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        return self.descriptor.digest

    def layers(self, platform: str = "linux/amd64") -> list[str]:
        """The layer digests of a platform's manifest."""
        doc = json.loads(self.blobs[self.manifests[platform].digest])
        return [layer["digest"] for layer in doc["layers"]]


def layer(files: dict[str, bytes]) -> tuple[bytes, str]:
    """A gzipped tar of `files` and its diff_id (the sha256 of the uncompressed tar)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    tar_bytes = raw.getvalue()
    return gzip.compress(tar_bytes, mtime=0), f"sha256:{hashlib.sha256(tar_bytes).hexdigest()}"


def _blob(built: Built, store: ImageStore | None, data: bytes, media_type: str) -> Descriptor:
    digest = sha256_digest(data)
    built.blobs[digest] = data
    if store is not None:
        store.write_blob(data)
    return Descriptor(media_type, digest, len(data))


def _manifest(
    built: Built, store: ImageStore | None, kind: str, platform: str, layer_sizes: tuple[int, ...]
) -> Descriptor:
    config_type, layer_type, _ = MEDIA_TYPES[kind]
    parsed = parse_platform(platform)
    layers, diff_ids = [], []
    for i, size in enumerate(layer_sizes):
        data, diff_id = layer({f"data/{platform.replace('/', '-')}-{i}.bin": os.urandom(size)})
        layers.append(_blob(built, store, data, layer_type))
        diff_ids.append(diff_id)
    config = {
        "architecture": parsed.architecture,
        "os": parsed.os,
        **({"variant": parsed.variant} if parsed.variant else {}),
        "config": {"Cmd": ["/data"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    config_descriptor = _blob(built, store, json.dumps(config).encode(), config_type)
    doc = {
        "schemaVersion": 2,
        "mediaType": kind,
        "config": config_descriptor.as_json(),
        "layers": [d.as_json() for d in layers],
    }
    descriptor = _blob(built, store, json.dumps(doc, indent=3).encode(), kind)
    built.manifests[platform] = descriptor
    return descriptor


def add_image(
    store: ImageStore,
    repository: str,
    tag: str,
    *,
    kind: str = OCI_MANIFEST,
    layer_sizes: tuple[int, ...] = (200_000, 3_000),
) -> Built:
    """One single-platform image (linux/amd64), tagged."""
    built = Built(Descriptor(kind, "sha256:" + "0" * 64, 0))
    built.descriptor = _manifest(built, store, kind, "linux/amd64", layer_sizes)
    store.tag_image(repository, tag, built.descriptor, source=None, platforms=ALL_PLATFORMS)
    return built


def add_index(
    store: ImageStore,
    repository: str,
    tag: str,
    *,
    kind: str = OCI_MANIFEST,
    platforms: tuple[str, ...] = ("linux/amd64", "linux/arm64/v8"),
    present: tuple[str, ...] | None = None,
    layer_sizes: tuple[int, ...] = (50_000, 2_000),
) -> Built:
    """A multi-platform index of `platforms`, tagged; the store gets the manifests and blobs of `present` only
    (all by default), as a fetch of some platforms leaves it."""
    present = platforms if present is None else present
    built = Built(Descriptor(kind, "sha256:" + "0" * 64, 0))
    entries = []
    for platform in platforms:
        descriptor = _manifest(built, store if platform in present else None, kind, platform, layer_sizes)
        parsed = parse_platform(platform)
        entry = descriptor.as_json()
        entry["platform"] = {
            "architecture": parsed.architecture,
            "os": parsed.os,
            **({"variant": parsed.variant} if parsed.variant else {}),
        }
        entries.append(entry)
    index_type = MEDIA_TYPES[kind][2]
    index = json.dumps({"schemaVersion": 2, "mediaType": index_type, "manifests": entries}).encode()
    built.descriptor = _blob(built, store, index, index_type)
    chosen = ALL_PLATFORMS if set(present) == set(platforms) else ",".join(present)
    store.tag_image(repository, tag, built.descriptor, source=None, platforms=chosen)
    return built
