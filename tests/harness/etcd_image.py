"""Container images the tests build offline: etcd's image as Flatcar runs it, made from Debian's etcd binary.

Flatcar's etcd-wrapper runs `docker run … --entrypoint /usr/local/bin/etcd <image>` (docs/field-notes.md §3), so
the image holds /usr/local/bin/etcd and what it needs to run in a root of its own: Debian's etcd links only the
C library, so libc.so.6 and the loader. Two layers, as real images have more than one (the library, then etcd),
gzip-compressed like a registry's. Tars and gzip streams carry fixed owners and times, so every build of an
image has the same digests.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
import re
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from coreos_lab.mirror.images.manifests import OCI_INDEX, OCI_MANIFEST, Descriptor
from coreos_lab.mirror.images.store import ImageStore, StoredImage

OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
ETCD_IN_IMAGE = "/usr/local/bin/etcd"  # Flatcar's --entrypoint
REF_NAME = "org.opencontainers.image.ref.name"


@dataclass(frozen=True)
class Blob:
    media_type: str
    data: bytes

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.data).hexdigest()

    @property
    def descriptor(self) -> Descriptor:
        return Descriptor(self.media_type, self.digest, len(self.data))

    def as_json(self) -> dict[str, object]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": len(self.data)}


@dataclass(frozen=True)
class TestImage:
    __test__ = False  # not a pytest test class

    manifest: Blob
    config: Blob
    layers: tuple[Blob, ...]

    @property
    def blobs(self) -> tuple[Blob, ...]:
        return (self.manifest, self.config, *self.layers)


def tar_of(files: dict[str, bytes]) -> bytes:
    """A reproducible tar of `files` (path in the image → content), parent directories included; files under a
    bin/ directory or named like a loader are executable."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        directories = sorted({str(p) for path in files for p in Path(path.lstrip("/")).parents if str(p) != "."})
        for directory in directories:
            info = tarfile.TarInfo(directory)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
            tar.addfile(info)
        for path, data in sorted(files.items()):
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size, info.mtime = len(data), 0
            info.mode = 0o755 if "/bin/" in path or re.search(r"\.so(\.\d+)*$", path) else 0o644
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def layer(files: dict[str, bytes]) -> tuple[Blob, str]:
    """A gzip-compressed layer blob and its diff_id (the digest of the uncompressed tar, as the config lists it)."""
    tar = tar_of(files)
    return Blob(OCI_LAYER_GZIP, gzip.compress(tar, compresslevel=1, mtime=0)), "sha256:" + hashlib.sha256(
        tar
    ).hexdigest()


def image(layers: list[dict[str, bytes]], *, architecture: str = "amd64", entrypoint: str = ETCD_IN_IMAGE) -> TestImage:
    """An OCI image of `layers` (each a mapping of path → content), lowest first."""
    built = [layer(files) for files in layers]
    config = {
        "architecture": architecture,
        "os": "linux",
        "config": {"Entrypoint": [entrypoint], "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id for _, diff_id in built]},
    }
    config_blob = Blob(OCI_CONFIG, json.dumps(config, sort_keys=True).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config_blob.as_json(),
        "layers": [blob.as_json() for blob, _ in built],
    }
    return TestImage(Blob(OCI_MANIFEST, json.dumps(manifest).encode()), config_blob, tuple(b for b, _ in built))


def libraries(binary: Path) -> dict[str, bytes]:
    """What `binary` links, by the path the loader looks for it at (`ldd`), each file's content."""
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True).stdout
    paths = re.findall(r"(?:=>\s*)?(/\S+)\s+\(0x", out)
    return {path: Path(path).resolve().read_bytes() for path in paths}


@functools.cache
def etcd_image(binary: Path = Path("/usr/bin/etcd")) -> TestImage:
    """etcd's image: the C library in one layer, `/usr/local/bin/etcd` (Debian's etcd) in the next."""
    return image([libraries(binary), {ETCD_IN_IMAGE: binary.read_bytes()}])


def small_image(text: str = "hello", architecture: str = "amd64") -> TestImage:
    """A tiny image of one file, for what does not need to run anything."""
    return image([{"/etc/hello": text.encode()}, {"/usr/local/bin/hello": b"#!/bin/sh\necho hello\n"}],
                 architecture=architecture, entrypoint="/usr/local/bin/hello")  # fmt: skip


def index_of(images: dict[str, TestImage]) -> Blob:
    """An OCI index of images by platform (`linux/amd64`, `linux/arm64/v8`)."""
    manifests = []
    for platform, img in images.items():
        os_name, architecture, *variant = platform.split("/")
        entry = {**img.manifest.as_json(), "platform": {"os": os_name, "architecture": architecture}}
        if variant:
            entry["platform"]["variant"] = variant[0]  # type: ignore[index]
        manifests.append(entry)
    return Blob(OCI_INDEX, json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}).encode())


def write_oci_layout(directory: Path, top: Blob, blobs: list[Blob], ref_name: str) -> Path:
    """An OCI image layout directory holding `top` (a manifest or index) as `ref_name`, and `blobs`."""
    for name, data in _layout_files(top, blobs, ref_name):
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_bytes(data)
    return directory


def oci_layout_tar(path: Path, top: Blob, blobs: list[Blob], ref_name: str) -> Path:
    """The same as a tarball (what `lab mirror image import` takes for the sneakernet case)."""
    with tarfile.open(path, "w") as tar:
        for name, data in _layout_files(top, blobs, ref_name):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _layout_files(top: Blob, blobs: list[Blob], ref_name: str) -> list[tuple[str, bytes]]:
    entry = {**top.as_json(), "annotations": {REF_NAME: ref_name}}
    files = [
        ("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode()),
        ("index.json", json.dumps({"schemaVersion": 2, "manifests": [entry]}).encode()),
    ]
    seen = set()
    for blob in [top, *blobs]:
        if blob.digest not in seen:
            seen.add(blob.digest)
            files.append((f"blobs/sha256/{blob.digest.removeprefix('sha256:')}", blob.data))
    return files


def push(layout: Path, ref_name: str, registry_host: str, target: str, *, all_platforms: bool = False,
         docker: bool = False) -> None:  # fmt: skip
    """`skopeo copy` of `ref_name` in the OCI layout directory `layout` to `<registry_host>/<target>` (plain HTTP);
    `docker`: converted to Docker's schema 2 media types (a manifest list for an index)."""
    argv = ["skopeo", "copy", "--quiet", "--dest-tls-verify=false"]
    argv += ["--all"] if all_platforms else []
    argv += ["--format", "v2s2"] if docker else []
    subprocess.run([*argv, f"oci:{layout}:{ref_name}", f"docker://{registry_host}/{target}"], check=True)


def put_in_store(mirror_root: Path, img: TestImage, repository: str, tag: str) -> StoredImage:
    """`img` in the mirror's image store as `repository:tag`, through the store's own API."""
    store = ImageStore(mirror_root)
    for blob in img.blobs:
        store.write_blob(blob.data, blob.digest)
    return store.tag_image(repository, tag, img.manifest.descriptor, source=None, platforms="all")
