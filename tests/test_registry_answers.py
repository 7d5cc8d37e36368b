"""What the registry answers at each /v2/ path (coreos_lab.mirror.images.registry), as plain data: no server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from harness.served_images import Built, add_image, add_index

from coreos_lab.mirror.images.manifests import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    MANIFEST_MEDIA_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
)
from coreos_lab.mirror.images.registry import Blob, Document, Manifest, Registry, RegistryError, accepts
from coreos_lab.mirror.images.store import ImageStore

EVERY_TYPE = ", ".join(MANIFEST_MEDIA_TYPES)


@pytest.fixture
def store(mirror_root: Path) -> ImageStore:
    return ImageStore(mirror_root)


@pytest.fixture
def registry(store: ImageStore) -> Registry:
    return Registry(store)


@pytest.fixture
def etcd(store: ImageStore) -> Built:
    return add_image(store, "coreos/etcd", "v3.5.16")


def error(answer: object, status: int, code: str) -> RegistryError:
    assert isinstance(answer, RegistryError), answer
    assert (answer.status, answer.code) == (status, code), answer
    return answer


def test_ping(registry: Registry) -> None:
    assert registry.resolve("/v2/") == Document({})
    assert registry.resolve("/v2") == Document({})


def test_manifest_by_tag_and_by_digest_is_the_stored_bytes(registry: Registry, etcd: Built) -> None:
    for reference in ("v3.5.16", etcd.digest):
        answer = registry.resolve(f"/v2/coreos/etcd/manifests/{reference}", accept=EVERY_TYPE)
        assert isinstance(answer, Manifest)
        assert answer.data == etcd.blobs[etcd.digest]  # as stored (indent=3), never re-serialised
        assert (answer.media_type, answer.digest) == (OCI_MANIFEST, etcd.digest)


def test_blobs_of_the_repository_are_served_with_their_size(registry: Registry, etcd: Built) -> None:
    config = json.loads(etcd.blobs[etcd.digest])["config"]["digest"]
    for digest in (*etcd.layers(), config, etcd.digest):  # a manifest is a blob too
        answer = registry.resolve(f"/v2/coreos/etcd/blobs/{digest}")
        assert isinstance(answer, Blob)
        assert answer.path.read_bytes() == etcd.blobs[digest] and answer.size == len(etcd.blobs[digest])
        assert answer.label.startswith("coreos/etcd@sha256:")


def test_a_blob_of_another_repository_is_unknown_here(store: ImageStore, registry: Registry, etcd: Built) -> None:
    other = add_image(store, "library/debian", "12")
    answer = registry.resolve(f"/v2/coreos/etcd/blobs/{other.layers()[0]}")
    assert error(answer, 404, "BLOB_UNKNOWN").detail == {"digest": other.layers()[0]}
    assert isinstance(registry.resolve(f"/v2/library/debian/blobs/{other.layers()[0]}"), Blob)


def test_a_blob_cut_short_or_only_a_part_is_never_served(store: ImageStore, registry: Registry, etcd: Built) -> None:
    first, second = etcd.layers()
    path = store.blob_path(first)
    path.write_bytes(etcd.blobs[first][:-10])
    error(registry.resolve(f"/v2/coreos/etcd/blobs/{first}"), 404, "BLOB_UNKNOWN")
    path = store.blob_path(second)
    path.rename(path.with_name(f"{path.name}.part"))
    error(registry.resolve(f"/v2/coreos/etcd/blobs/{second}"), 404, "BLOB_UNKNOWN")


def test_a_damaged_manifest_is_never_served(store: ImageStore, registry: Registry, etcd: Built) -> None:
    data = bytearray(etcd.blobs[etcd.digest])
    data[-2:-1] = b" "
    store.blob_path(etcd.digest).write_bytes(bytes(data))
    answer = error(registry.resolve("/v2/coreos/etcd/manifests/v3.5.16"), 404, "MANIFEST_UNKNOWN")
    assert "damaged" in answer.message


def test_an_index_fetched_for_one_platform(store: ImageStore, registry: Registry) -> None:
    built = add_index(store, "coreos/etcd", "multi", present=("linux/amd64",))
    answer = registry.resolve("/v2/coreos/etcd/manifests/multi", accept=EVERY_TYPE)
    assert isinstance(answer, Manifest) and answer.data == built.blobs[built.digest]  # as stored: both platforms
    assert answer.media_type == OCI_INDEX
    amd64, arm64 = built.manifests["linux/amd64"], built.manifests["linux/arm64/v8"]
    assert isinstance(registry.resolve(f"/v2/coreos/etcd/manifests/{amd64.digest}"), Manifest)
    error(registry.resolve(f"/v2/coreos/etcd/manifests/{arm64.digest}"), 404, "MANIFEST_UNKNOWN")
    arm64_layer = json.loads(built.blobs[arm64.digest])["layers"][0]["digest"]
    error(registry.resolve(f"/v2/coreos/etcd/blobs/{arm64_layer}"), 404, "BLOB_UNKNOWN")
    assert isinstance(registry.resolve(f"/v2/coreos/etcd/blobs/{built.layers()[0]}"), Blob)


@pytest.mark.parametrize("kind", [OCI_MANIFEST, DOCKER_MANIFEST])
def test_a_client_that_takes_no_index_gets_the_amd64_manifest_by_tag(
    store: ImageStore, registry: Registry, kind: str
) -> None:
    built = add_index(store, "coreos/etcd", "multi", kind=kind)
    answer = registry.resolve("/v2/coreos/etcd/manifests/multi", accept=kind)
    amd64 = built.manifests["linux/amd64"]
    assert isinstance(answer, Manifest)
    assert (answer.digest, answer.media_type, answer.data) == (amd64.digest, kind, built.blobs[amd64.digest])
    # By digest only the index's own bytes will do.
    answer = registry.resolve(f"/v2/coreos/etcd/manifests/{built.digest}", accept=kind)
    assert isinstance(answer, Manifest) and answer.digest == built.digest
    # Without an Accept header, or with one that takes anything: the index as stored.
    for accept in (None, "*/*", f"{DOCKER_MANIFEST_LIST}, {OCI_INDEX};q=0.5"):
        answer = registry.resolve("/v2/coreos/etcd/manifests/multi", accept=accept)
        assert isinstance(answer, Manifest) and answer.digest == built.digest, accept


def test_no_amd64_in_an_index_for_a_client_that_takes_no_index(store: ImageStore, registry: Registry) -> None:
    add_index(store, "coreos/etcd", "arm", platforms=("linux/arm64/v8",))
    answer = error(registry.resolve("/v2/coreos/etcd/manifests/arm", accept=OCI_MANIFEST), 404, "MANIFEST_UNKNOWN")
    assert "linux/amd64" in answer.message


def test_accepts() -> None:
    assert accepts(None, OCI_INDEX) and accepts("", OCI_INDEX) and accepts("*/*", OCI_INDEX)
    assert accepts(f"{DOCKER_MANIFEST} ,{OCI_INDEX} ; q=0.9", OCI_INDEX)
    assert not accepts(DOCKER_MANIFEST, OCI_INDEX)


def test_tags_and_catalog_pages(store: ImageStore, registry: Registry, etcd: Built) -> None:
    for tag in ("v3.5.0", "v3.4.0", "latest"):
        store.tag_image("coreos/etcd", tag, etcd.descriptor, source=None, platforms="all")
    store.tag_image("library/debian", "12", etcd.descriptor, source=None, platforms="all")
    store.tag_image("a", "1", etcd.descriptor, source=None, platforms="all")
    tags = ["latest", "v3.4.0", "v3.5.0", "v3.5.16"]
    assert registry.resolve("/v2/coreos/etcd/tags/list") == Document({"name": "coreos/etcd", "tags": tags})
    first = registry.resolve("/v2/coreos/etcd/tags/list", {"n": "2"})
    assert first == Document({"name": "coreos/etcd", "tags": tags[:2]}, "/v2/coreos/etcd/tags/list?n=2&last=v3.4.0")
    last = registry.resolve("/v2/coreos/etcd/tags/list", {"n": "2", "last": "v3.4.0"})
    assert last == Document({"name": "coreos/etcd", "tags": tags[2:]})  # nothing after it: no next link
    assert registry.resolve("/v2/coreos/etcd/tags/list", {"last": "v3"}) == Document(
        {"name": "coreos/etcd", "tags": tags[1:]}
    )
    assert registry.resolve("/v2/coreos/etcd/tags/list", {"n": "0"}) == Document({"name": "coreos/etcd", "tags": []})
    repositories = ["a", "coreos/etcd", "library/debian"]
    assert registry.resolve("/v2/_catalog") == Document({"repositories": repositories})
    assert registry.resolve("/v2/_catalog", {"n": "1", "last": "a"}) == Document(
        {"repositories": ["coreos/etcd"]}, "/v2/_catalog?n=1&last=coreos%2Fetcd"
    )
    for n in ("-1", "x", "", "٣"):
        error(registry.resolve("/v2/_catalog", {"n": n}), 400, "PAGINATION_NUMBER_INVALID")


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/v2/coreos/nope/manifests/v1", 404, "NAME_UNKNOWN"),
        ("/v2/coreos/nope/blobs/sha256:" + "a" * 64, 404, "NAME_UNKNOWN"),
        ("/v2/coreos/nope/tags/list", 404, "NAME_UNKNOWN"),
        ("/v2/coreos/etcd/manifests/v9", 404, "MANIFEST_UNKNOWN"),
        ("/v2/coreos/etcd/manifests/sha256:" + "a" * 64, 404, "MANIFEST_UNKNOWN"),
        ("/v2/coreos/etcd/manifests/-bad-tag", 404, "MANIFEST_UNKNOWN"),
        ("/v2/coreos/etcd/manifests/sha256:xyz", 400, "DIGEST_INVALID"),
        ("/v2/coreos/etcd/blobs/sha256:" + "a" * 64, 404, "BLOB_UNKNOWN"),
        ("/v2/coreos/etcd/blobs/sha256:" + "A" * 64, 400, "DIGEST_INVALID"),
        ("/v2/coreos/etcd/blobs/md5:abc", 400, "DIGEST_INVALID"),
        ("/v2/Coreos/etcd/tags/list", 400, "NAME_INVALID"),
        ("/v2/coreos//etcd/tags/list", 400, "NAME_INVALID"),
        ("/v2/coreos%2Fetcd/tags/list", 400, "NAME_INVALID"),
        ("/v2/" + "a" * 256 + "/tags/list", 400, "NAME_INVALID"),
        ("/v2/coreos/etcd/blobs/uploads/", 404, "UNSUPPORTED"),
        ("/v2/coreos/etcd", 404, "UNSUPPORTED"),
        ("/v2/_catalog/x", 404, "UNSUPPORTED"),
    ],
)
def test_errors(registry: Registry, etcd: Built, path: str, status: int, code: str) -> None:
    answer = error(registry.resolve(path), status, code)
    assert answer.as_json()["errors"][0]["code"] == code and answer.message


@pytest.mark.parametrize(
    "path",
    [
        "/v2/../../etc/passwd",
        "/v2/%2e%2e/%2e%2e/etc/blobs/sha256:" + "a" * 64,
        "/v2/coreos/etcd/blobs/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        "/v2/coreos/etcd/blobs/sha256:..%2F..%2Foci-layout",
        "/v2/coreos/etcd/blobs/%2Fetc%2Fpasswd",
        "/v2/coreos/etcd/manifests/..%2F..%2Findex.json",
        "/v2/coreos/etcd/manifests/sha256:..%2F..%2F..%2Findex.json",
        "/v2/..%2F..%2F..%2Fetc/tags/list",
    ],
)
def test_traversal_never_names_a_file(registry: Registry, etcd: Built, path: str) -> None:
    answer = registry.resolve(path)
    assert isinstance(answer, RegistryError) and answer.status in (400, 404), answer
