"""Container images the tests build themselves, offline, and the skopeo commands that move them around.

The etcd image is what Flatcar's etcd-member pulls, in miniature: one layer holding Debian's etcd binary
(`/usr/bin/etcd`) at `usr/local/bin/etcd`, a second small layer, and a config whose entrypoint runs it. The
multi-platform image is an OCI index of a linux/amd64 and a linux/arm64/v8 image that share the etcd layer.
Everything is written as an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/…`), which skopeo reads
as `oci:DIR:NAME`; from there skopeo seeds a registry, or writes a `docker save`-format archive.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

ETCD_BINARY = Path("/usr/bin/etcd")  # Debian's etcd-server
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"
# Names inside the layout the builders write (skopeo's `oci:DIR:NAME`).
SINGLE, MULTI = "etcd", "etcd-multi"


def digest_of(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


@dataclass(frozen=True)
class Blob:
    media_type: str
    digest: str
    size: int

    def descriptor(self, **extra: object) -> dict[str, object]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size, **extra}


@dataclass(frozen=True)
class Layer:
    blob: Blob
    diff_id: str  # sha256 of the uncompressed tar, as the config lists it


class OciLayout:
    """An OCI image layout directory being written."""

    def __init__(self, path: Path):
        self.path = path
        (path / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
        self.entries: list[dict[str, object]] = []

    def blob_path(self, digest: str) -> Path:
        return self.path / "blobs" / "sha256" / digest.removeprefix("sha256:")

    def add_blob(self, data: bytes, media_type: str) -> Blob:
        digest = digest_of(data)
        self.blob_path(digest).write_bytes(data)
        return Blob(media_type, digest, len(data))

    def add_layer(self, files: dict[str, bytes], *, level: int = 1) -> Layer:
        """A gzip-compressed layer tar of `files` (path in the image → content), reproducible: fixed times,
        owners and modes, so building twice gives the same digests."""
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
            directories = sorted({str(Path(p).parent) for p in files if str(Path(p).parent) != "."})
            for directory in _with_parents(directories):
                info = tarfile.TarInfo(directory)
                info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
                tar.addfile(info)
            for name, content in sorted(files.items()):
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(content), 0o755, 0
                tar.addfile(info, io.BytesIO(content))
        tar_bytes = raw.getvalue()
        compressed = gzip.compress(tar_bytes, compresslevel=level, mtime=0)
        return Layer(self.add_blob(compressed, OCI_LAYER_GZIP), digest_of(tar_bytes))

    def add_image(self, layers: Sequence[Layer], *, architecture: str = "amd64", variant: str | None = None) -> Blob:
        config = {
            "architecture": architecture,
            "os": "linux",
            **({"variant": variant} if variant else {}),
            "config": {"Entrypoint": ["/usr/local/bin/etcd"], "Env": ["PATH=/usr/local/bin:/usr/bin:/bin"]},
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
            "history": [{"created_by": "coreos-lab tests"} for _ in layers],
        }
        config_blob = self.add_blob(json.dumps(config).encode(), OCI_CONFIG)
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config_blob.descriptor(),
            "layers": [layer.blob.descriptor() for layer in layers],
        }
        return self.add_blob(json.dumps(manifest, indent=2).encode(), OCI_MANIFEST)

    def add_index(self, images: Sequence[tuple[Blob, dict[str, str]]]) -> Blob:
        index = {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [image.descriptor(platform=platform) for image, platform in images],
        }
        return self.add_blob(json.dumps(index, indent=2).encode(), OCI_INDEX)

    def name(self, blob: Blob, ref_name: str) -> None:
        """List `blob` in index.json under `ref_name` (what `oci:DIR:ref_name` finds)."""
        self.entries = [e for e in self.entries if e["annotations"] != {REF_NAME: ref_name}]  # type: ignore[index]
        self.entries.append(blob.descriptor(annotations={REF_NAME: ref_name}))
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": self.entries}
        (self.path / "index.json").write_text(json.dumps(index, indent=2))


def _with_parents(directories: list[str]) -> list[str]:
    found: set[str] = set()
    for directory in directories:
        parts = Path(directory).parts
        found.update(str(Path(*parts[: i + 1])) for i in range(len(parts)))
    return sorted(found)


@dataclass(frozen=True)
class BuiltImages:
    """The layout holding the test images, and what each is."""

    layout: Path
    single: Blob  # the linux/amd64 etcd image's manifest (named SINGLE)
    index: Blob  # the two-platform index (named MULTI)
    amd64: Blob  # the index's linux/amd64 manifest
    arm64: Blob  # the index's linux/arm64/v8 manifest

    def source(self, name: str) -> str:
        return f"oci:{self.layout}:{name}"


def build_test_images(directory: Path) -> BuiltImages:
    """The etcd image and the two-platform index in one OCI layout at `directory`."""
    layout = OciLayout(directory)
    etcd = layout.add_layer({"usr/local/bin/etcd": ETCD_BINARY.read_bytes()})
    release = layout.add_layer({"etc/etcd-image-release": b"coreos-lab test image, linux/amd64\n"})
    single = layout.add_image([etcd, release])
    layout.name(single, SINGLE)
    arm_release = layout.add_layer({"etc/etcd-image-release": b"coreos-lab test image, linux/arm64\n"})
    # The arm64 image shares the etcd layer (the binary is amd64; nothing runs it): dedup across platforms.
    arm64 = layout.add_image([etcd, arm_release], architecture="arm64", variant="v8")
    index = layout.add_index(
        [
            (single, {"os": "linux", "architecture": "amd64"}),
            (arm64, {"os": "linux", "architecture": "arm64", "variant": "v8"}),
        ]
    )
    layout.name(index, MULTI)
    return BuiltImages(directory, single, index, single, arm64)


@pytest.fixture(scope="session")
def built_images(tmp_path_factory: pytest.TempPathFactory) -> BuiltImages:
    """The test images, built once per session."""
    return build_test_images(tmp_path_factory.mktemp("oci-images") / "layout")


def build_random_image(directory: Path, name: str, layer_sizes: Sequence[int]) -> Blob:
    """An image of incompressible layers (random bytes) of about the given sizes, for benchmarks."""
    layout = OciLayout(directory)
    layers = [
        layout.add_layer({f"data/layer-{i}.bin": os.urandom(size)}, level=1) for i, size in enumerate(layer_sizes)
    ]
    image = layout.add_image(layers)
    layout.name(image, name)
    return image


# -- skopeo ---------------------------------------------------------------------------------------------


def skopeo(*args: str, timeout: float = 300) -> str:
    """Run skopeo (no signature policy: the tests' own images are unsigned); its stdout, or an error with stderr."""
    proc = subprocess.run(
        ["skopeo", "--insecure-policy", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"skopeo {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def seed(source: str, registry: str, reference: str, *, all_platforms: bool = False, creds: str | None = None) -> None:
    """`skopeo copy SOURCE docker://REGISTRY/REFERENCE` over plain HTTP (`--all` copies every platform)."""
    args = ["copy", "--dest-tls-verify=false"]
    if all_platforms:
        args.append("--all")
    if creds:
        args += ["--dest-creds", creds]
    skopeo(*args, source, f"docker://{registry}/{reference}")


def inspect_raw(reference: str, *, creds: str | None = None) -> bytes:
    """The manifest bytes a registry answers for `docker://REFERENCE` (skopeo's own fetch)."""
    args = ["inspect", "--raw", "--tls-verify=false", *(["--creds", creds] if creds else [])]
    return skopeo(*args, f"docker://{reference}").encode()


def save_docker_archive(source: str, archive: Path, name: str) -> None:
    """A `docker save`-format archive (manifest.json, repositories, <hex>.json config, layer tars)."""
    skopeo("copy", source, f"docker-archive:{archive}:{name}")


def tar_directory(directory: Path, archive: Path) -> None:
    """`directory`'s files as a tar with paths relative to it (an OCI layout tarball)."""
    with tarfile.open(archive, "w") as tar:
        for path in sorted(directory.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(directory)), recursive=False)
