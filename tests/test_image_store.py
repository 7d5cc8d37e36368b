"""The image store's own rules: references, manifests, content addresses and the catalog in index.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coreos_lab.errors import BadInput, LabError
from coreos_lab.mirror.images.manifests import (
    DOCKER_MANIFEST_LIST,
    OCI_MANIFEST,
    Descriptor,
    ImageIndex,
    parse_manifest,
    parse_platform,
)
from coreos_lab.mirror.images.reference import parse_reference
from coreos_lab.mirror.images.store import ImageStore, sha256_digest


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        ("quay.io/coreos/etcd:v3.5.16", "quay.io", "coreos/etcd", "v3.5.16", None),
        ("debian", "docker.io", "library/debian", "latest", None),
        ("127.0.0.1:5000/coreos/etcd", "127.0.0.1:5000", "coreos/etcd", "latest", None),
        ("localhost/a/b:1@sha256:" + "a" * 64, "localhost", "a/b", "1", "sha256:" + "a" * 64),
        ("user/app@sha256:" + "b" * 64, "docker.io", "user/app", None, "sha256:" + "b" * 64),
        ("Quay.IO/coreos/etcd", "quay.io", "coreos/etcd", "latest", None),  # as credentials are looked up
    ],
)
def test_references(text: str, registry: str, repository: str, tag: str | None, digest: str | None) -> None:
    ref = parse_reference(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repository, tag, digest)


@pytest.mark.parametrize("text", ["", " x", "Quay.io/UPPER/x", "x:bad tag", "x@sha256:123", "a//b", "x:"])
def test_bad_references_name_the_value(text: str) -> None:
    with pytest.raises(BadInput) as info:
        parse_reference(text)
    assert repr(text)[1:-1] in info.value.message or text == ""


def test_platform_matching() -> None:
    index = parse_manifest(
        json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": DOCKER_MANIFEST_LIST,
                "manifests": [
                    {
                        "mediaType": OCI_MANIFEST,
                        "digest": "sha256:" + "1" * 64,
                        "size": 1,
                        "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"},
                    },
                    {
                        "mediaType": OCI_MANIFEST,
                        "digest": "sha256:" + "2" * 64,
                        "size": 1,
                        "platform": {"os": "linux", "architecture": "amd64"},
                    },
                ],
            }
        ).encode(),
        None,
        "test",
    )
    assert isinstance(index, ImageIndex)
    assert index.for_platform(parse_platform("linux/amd64")).digest.endswith("2" * 64)
    assert index.for_platform(parse_platform("linux/arm64/v8")).digest.endswith("1" * 64)
    assert index.for_platform(parse_platform("linux/s390x")) is None
    with pytest.raises(BadInput, match="linux"):
        parse_platform("linux")


def _image(store: ImageStore) -> Descriptor:
    layer = store.write_blob(b"layer bytes")
    config = store.write_blob(b'{"architecture": "amd64", "os": "linux"}')
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 40},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": 11}],
        }
    ).encode()
    return Descriptor(OCI_MANIFEST, store.write_blob(manifest), len(manifest))


def test_tagging_needs_every_blob_and_is_an_oci_layout(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    descriptor = _image(store)
    layer = store.manifest(descriptor).layers[0]  # type: ignore[union-attr]
    store.blob_path(layer.digest).unlink()
    with pytest.raises(LabError, match=layer.digest):
        store.tag_image("coreos/etcd", "v1", descriptor, source=None, platforms="all")
    assert store.images() == []
    assert not store.index_path.exists()

    descriptor = _image(store)
    image = store.tag_image("coreos/etcd", "v1", descriptor, source="quay.io/coreos/etcd:v1", platforms="all")
    assert store.lookup("coreos/etcd", "v1") == image
    assert store.lookup_manifest("coreos/etcd", descriptor.digest) == descriptor
    assert store.lookup_manifest("coreos/etcd", "v2") is None
    assert store.repositories() == ["coreos/etcd"]
    index = json.loads(store.index_path.read_text())
    assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == "coreos/etcd:v1"
    assert json.loads((store.dir / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    for blob in store.required_blobs(descriptor):
        assert sha256_digest(store.read_blob(blob.digest)) == blob.digest


def test_write_blob_refuses_a_wrong_digest(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    with pytest.raises(LabError, match="does not match"):
        store.write_blob(b"abc", "sha256:" + "0" * 64)
    assert store.blob_paths() == []


def test_tagging_refuses_to_rewrite_a_damaged_catalog(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    descriptor = _image(store)
    store.index_path.write_text("{not json")
    with pytest.raises(BadInput, match="damaged image catalog") as info:
        store.tag_image("coreos/etcd", "v1", descriptor, source=None, platforms="all")
    assert info.value.hint == "run lab mirror verify"
    assert store.index_path.read_text() == "{not json"


def test_a_blob_is_on_disk_before_its_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    store = ImageStore(tmp_path)
    digest = sha256_digest(b"blob")
    with store.staging(digest) as part:
        part.write(b"blob")
        part.flush()
        synced: list[bool] = []
        real_fsync = os.fsync
        monkeypatch.setattr(os, "fsync", lambda fd: synced.append(not store.has_blob(digest)) or real_fsync(fd))
        store.commit_blob(digest, Path(part.name))
    assert synced == [True] and store.read_blob(digest) == b"blob"


def test_the_mirror_reference_drops_the_registry_host() -> None:
    assert parse_reference("quay.io/coreos/etcd:v3.5.16").mirror_reference == "coreos/etcd:v3.5.16"
    pinned = parse_reference("quay.io/coreos/etcd@sha256:" + "a" * 64)
    assert pinned.mirror_reference == "coreos/etcd@sha256:" + "a" * 64
