"""The registry over HTTP: headers, HEAD, Range, conditional requests, errors, refused writes, traversal, and
blob transfers in the live view. In-process server (EmbeddedServer), real HTTP (raw bytes where the request line
matters)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar
from urllib.parse import quote, urlencode

import pytest
from harness.boxes import add_box
from harness.http_client import Client
from harness.served_images import Built, add_image, add_index
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coreos_lab.mirror import http as mirror_http
from coreos_lab.mirror.images.manifests import DOCKER_MANIFEST, MANIFEST_MEDIA_TYPES, OCI_INDEX, OCI_MANIFEST
from coreos_lab.mirror.images.store import ImageStore
from coreos_lab.mirror.store import MirrorStore
from coreos_lab.mirror.transfers import Transfer, TransferTracker
from coreos_lab.server import EmbeddedServer

pytestmark = pytest.mark.integration

API_VERSION = "registry/2.0"
ACCEPT = {"Accept": ", ".join(MANIFEST_MEDIA_TYPES)}


class RecordingTracker(TransferTracker):
    """Every transfer begun (class-wide: the server builds its own tracker)."""

    transfers: ClassVar[list[Transfer]] = []

    def begin(self, client: str, label: str, total: int) -> Transfer:
        transfer = super().begin(client, label, total)
        RecordingTracker.transfers.append(transfer)
        return transfer


@pytest.fixture
def store(mirror_root: Path) -> ImageStore:
    return ImageStore(mirror_root)


@pytest.fixture
def etcd(store: ImageStore) -> Built:
    return add_image(store, "coreos/etcd", "v3.5.16", layer_sizes=(300_000, 1_000))


@pytest.fixture
def client(store: ImageStore, etcd: Built, monkeypatch: pytest.MonkeyPatch) -> Iterator[Client]:
    RecordingTracker.transfers = []
    monkeypatch.setattr(mirror_http, "TransferTracker", RecordingTracker)
    with EmbeddedServer(store.dir.parent, port=0) as srv:
        yield Client(srv.url)


def errors(body: bytes) -> list[str]:
    return [e["code"] for e in json.loads(body)["errors"]]


def test_ping_says_the_api_version(client: Client) -> None:
    for path in ("/v2/", "/v2"):
        status, headers, body = client.request("GET", path)
        assert (status, json.loads(body)) == (200, {}), path
        assert headers["Docker-Distribution-API-Version"] == API_VERSION
        assert headers["Content-Type"].startswith("application/json")


def test_manifest_get_and_head(client: Client, etcd: Built) -> None:
    stored = etcd.blobs[etcd.digest]
    for reference in ("v3.5.16", etcd.digest):
        path = f"/v2/coreos/etcd/manifests/{reference}"
        status, headers, body = client.request("GET", path, ACCEPT)
        assert status == 200 and body == stored
        assert headers["Content-Type"] == OCI_MANIFEST
        assert headers["Docker-Content-Digest"] == etcd.digest
        assert headers["Content-Length"] == str(len(stored))
        assert headers["ETag"] == f'"{etcd.digest}"'
        assert headers["Docker-Distribution-API-Version"] == API_VERSION
        status, head_headers, body = client.request("HEAD", path, ACCEPT)
        assert (status, body) == (200, b"")
        for header in ("Content-Type", "Docker-Content-Digest", "Content-Length", "ETag"):
            assert head_headers[header] == headers[header], header


def test_manifest_if_none_match_is_304(client: Client, etcd: Built) -> None:
    status, headers, body = client.request(
        "GET", "/v2/coreos/etcd/manifests/v3.5.16", {**ACCEPT, "If-None-Match": f'"{etcd.digest}"'}
    )
    assert (status, body) == (304, b"") and headers["ETag"] == f'"{etcd.digest}"'


def test_docker_manifest_list_for_a_client_that_takes_no_list(client: Client, store: ImageStore) -> None:
    built = add_index(store, "library/debian", "12", kind=DOCKER_MANIFEST)
    amd64 = built.manifests["linux/amd64"]
    status, headers, body = client.request("GET", "/v2/library/debian/manifests/12", {"Accept": DOCKER_MANIFEST})
    assert (status, body) == (200, built.blobs[amd64.digest])
    assert headers["Content-Type"] == DOCKER_MANIFEST and headers["Docker-Content-Digest"] == amd64.digest


def test_blob_get_head_and_ranges(client: Client, etcd: Built) -> None:
    digest = etcd.layers()[0]
    data = etcd.blobs[digest]
    path = f"/v2/coreos/etcd/blobs/{digest}"
    status, headers, body = client.request("GET", path)
    assert status == 200 and body == data
    assert headers["Content-Type"] == "application/octet-stream"
    assert headers["Docker-Content-Digest"] == digest and headers["ETag"] == f'"{digest}"'
    assert headers["Content-Length"] == str(len(data)) and headers["Accept-Ranges"] == "bytes"
    assert headers["Docker-Distribution-API-Version"] == API_VERSION
    status, head_headers, body = client.request("HEAD", path)
    assert (status, body) == (200, b"") and head_headers["Content-Length"] == str(len(data))
    status, headers, body = client.request("GET", path, {"Range": "bytes=100-199"})
    assert (status, body) == (206, data[100:200]) and headers["Content-Range"] == f"bytes 100-199/{len(data)}"
    status, _, body = client.request("GET", path, {"Range": "bytes=1000-", "If-Range": f'"{digest}"'})
    assert (status, body) == (206, data[1000:])
    status, _, body = client.request("GET", path, {"Range": "bytes=1000-", "If-Range": '"sha256:stale"'})
    assert (status, body) == (200, data)
    status, headers, _ = client.request("GET", path, {"Range": f"bytes={len(data) + 10}-{len(data) + 20}"})
    assert status == 416 and headers["Content-Range"] == f"bytes */{len(data)}"
    status, _, body = client.request("GET", path, {"If-None-Match": f'"{digest}"'})
    assert (status, body) == (304, b"")


def test_blob_transfers_are_followed_like_box_transfers(client: Client, etcd: Built) -> None:
    digest = etcd.layers()[0]
    status, _, body = client.request("GET", f"/v2/coreos/etcd/blobs/{digest}", {"Range": "bytes=10-"})
    assert status == 206
    (transfer,) = RecordingTracker.transfers
    assert transfer.label == f"coreos/etcd@{digest[:19]}" and transfer.total == len(body)


def test_tags_and_catalog_link_to_the_next_page(client: Client, store: ImageStore, etcd: Built) -> None:
    for tag in ("a", "b", "c"):
        store.tag_image("coreos/etcd", tag, etcd.descriptor, source=None, platforms="all")
    status, headers, body = client.request("GET", "/v2/coreos/etcd/tags/list?n=2")
    assert (status, json.loads(body)) == (200, {"name": "coreos/etcd", "tags": ["a", "b"]})
    assert headers["Link"] == '</v2/coreos/etcd/tags/list?n=2&last=b>; rel="next"'
    status, headers, body = client.request("GET", "/v2/coreos/etcd/tags/list?n=2&last=b")
    assert json.loads(body)["tags"] == ["c", "v3.5.16"] and "Link" not in headers
    status, headers, body = client.request("GET", "/v2/_catalog?n=5")
    assert (status, json.loads(body)) == (200, {"repositories": ["coreos/etcd"]}) and "Link" not in headers


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/v2/coreos/nope/manifests/v1", 404, "NAME_UNKNOWN"),
        ("/v2/coreos/etcd/manifests/v9", 404, "MANIFEST_UNKNOWN"),
        ("/v2/coreos/etcd/blobs/sha256:" + "a" * 64, 404, "BLOB_UNKNOWN"),
        ("/v2/Coreos/etcd/tags/list", 400, "NAME_INVALID"),
        ("/v2/coreos/etcd/blobs/sha256:abc", 400, "DIGEST_INVALID"),
        ("/v2/coreos/etcd/manifests/sha256:abc", 400, "DIGEST_INVALID"),
        ("/v2/_catalog?n=many", 400, "PAGINATION_NUMBER_INVALID"),
    ],
)
def test_errors_are_the_registry_json_and_head_has_no_body(client: Client, path: str, status: int, code: str) -> None:
    got, headers, body = client.request("GET", path, ACCEPT)
    assert (got, errors(body)) == (status, [code])
    assert headers["Content-Type"].startswith("application/json")
    assert headers["Docker-Distribution-API-Version"] == API_VERSION
    got, headers, body = client.request("HEAD", path, ACCEPT)
    assert (got, body) == (status, b"")


@pytest.mark.parametrize("method", ["PUT", "POST", "PATCH", "DELETE", "OPTIONS"])
@pytest.mark.parametrize(
    "path",
    [
        "/v2/",
        "/v2/coreos/etcd/manifests/v3.5.16",
        "/v2/coreos/etcd/blobs/uploads/",
        "/v2/coreos/etcd/blobs/uploads/0123?digest=sha256:" + "0" * 64,
        "/v2/coreos/etcd/blobs/sha256:" + "0" * 64,
        "/v2/new/image/manifests/v1",
    ],
)
def test_writes_are_refused(client: Client, store: ImageStore, etcd: Built, method: str, path: str) -> None:
    before = sorted(p.name for p in store.blob_paths()), store.index_path.read_bytes()
    status, headers, body = client.request(method, path)
    assert (status, errors(body)) == (405, ["UNSUPPORTED"])
    assert headers["Allow"] == "GET, HEAD" and headers["Docker-Distribution-API-Version"] == API_VERSION
    assert (sorted(p.name for p in store.blob_paths()), store.index_path.read_bytes()) == before


@pytest.mark.parametrize(
    "path",
    [
        "/v2/../../../../etc/passwd",
        "/v2/coreos/etcd/blobs/../../../../../etc/passwd",
        "/v2/coreos/etcd/blobs/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        "/v2/coreos/etcd/blobs/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/v2/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/v2/coreos/etcd/blobs/sha256:..%2F..%2F..%2Findex.json",
        "/v2/coreos/etcd/blobs/%2Fetc%2Fpasswd",
        "/v2//etc/passwd",
        "/v2/coreos/etcd/manifests/..%2F..%2Findex.json",
        "/v2/coreos/etcd/manifests/%2e%2e%2f%2e%2e%2foci-layout",
        "http://127.0.0.1/v2/../etc/passwd",
    ],
)
def test_traversal_attempts_are_refused(client: Client, path: str) -> None:
    status, body = client.raw(f"GET {path} HTTP/1.1")
    assert status in (400, 403, 404), path
    assert b"root:" not in body and b"imageLayoutVersion" not in body and b"schemaVersion" not in body


def test_a_symlink_out_of_the_blobs_is_never_followed(client: Client, store: ImageStore, etcd: Built) -> None:
    digest = etcd.layers()[1]
    outside = store.dir.parent.parent / "outside.bin"
    outside.write_bytes(etcd.blobs[digest])  # even with the right bytes and size
    store.blob_path(digest).unlink()
    store.blob_path(digest).symlink_to(outside)
    status, _, body = client.request("GET", f"/v2/coreos/etcd/blobs/{digest}")
    assert (status, errors(body)) == (404, ["BLOB_UNKNOWN"])


def test_boxes_and_images_side_by_side(client: Client, store: ImageStore, etcd: Built) -> None:
    """The box mirror still answers every other path; the index page offers the pull command."""
    add_box(MirrorStore(store.dir.parent), "coreos-stable", "1.0.0")
    status, _, body = client.request("GET", "/coreos-stable")
    assert status == 200 and json.loads(body)["name"] == "coreos-stable"
    status, _, page = client.request("GET", "/", {"Host": "10.0.2.2:8080"})
    assert status == 200 and b"docker pull 10.0.2.2:8080/coreos/etcd:v3.5.16" in page
    status, _, body = client.request("GET", "/v2x")  # not the registry: a box name
    assert status == 404 and b"no box named 'v2x'" in body


def test_many_concurrent_blob_downloads_are_identical(client: Client, etcd: Built) -> None:
    from concurrent.futures import ThreadPoolExecutor

    digest = etcd.layers()[0]

    def fetch(_: int) -> str:
        status, _, body = client.request("GET", f"/v2/coreos/etcd/blobs/{digest}")
        assert status == 200
        return f"sha256:{hashlib.sha256(body).hexdigest()}"

    with ThreadPoolExecutor(max_workers=20) as pool:
        assert list(pool.map(fetch, range(40))) == [digest] * 40


def test_an_oci_index_by_tag_for_an_oci_client(client: Client, store: ImageStore) -> None:
    built = add_index(store, "coreos/etcd", "multi", present=("linux/amd64",))
    status, headers, body = client.request("GET", "/v2/coreos/etcd/manifests/multi", ACCEPT)
    assert (status, body) == (200, built.blobs[built.digest])
    assert headers["Content-Type"] == OCI_INDEX and headers["Docker-Content-Digest"] == built.digest
    arm64 = built.manifests["linux/arm64/v8"].digest
    status, _, body = client.request("GET", f"/v2/coreos/etcd/manifests/{arm64}", ACCEPT)
    assert (status, errors(body)) == (404, ["MANIFEST_UNKNOWN"])


REGISTRY_SEGMENT = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=300),
    st.sampled_from(["coreos", "etcd", "manifests", "blobs", "tags", "list", "_catalog", "v3.5.16", "sha256:"]),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    segments=st.lists(REGISTRY_SEGMENT, min_size=0, max_size=5),
    n=st.one_of(st.none(), st.text(max_size=25), st.integers(-5, 2**70).map(str)),
    last=st.one_of(st.none(), st.text(max_size=300)),
)
def test_any_registry_request_gets_an_answer_never_a_server_error(
    client: Client, segments: list[str], n: str | None, last: str | None
) -> None:
    """Whatever the path and the paging parameters, the answer is a 2xx or the registry's JSON error."""
    query = urlencode({k: v for k, v in (("n", n), ("last", last)) if v is not None})
    path = "/v2/" + "/".join(quote(segment, safe="") for segment in segments) + (f"?{query}" if query else "")
    status, _, body = client.request("GET", path)
    assert status < 500, path
    if status >= 400:
        assert errors(body), path
