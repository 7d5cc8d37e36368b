"""The mirror's HTTP answers: metadata, seed names, box files with Range/If-Range, index, path safety.

The server runs in-process (EmbeddedServer, a real aiohttp server on a free port); requests are real HTTP,
sent with http.client or as raw bytes on a socket where the exact request line matters.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from email.utils import formatdate
from pathlib import Path
from urllib.parse import quote

import pytest
from harness.boxes import add_box
from harness.http_client import Client
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from coreos_lab.mirror.store import MirrorStore
from coreos_lab.server import EmbeddedServer

BOX = "/coreos-stable/1.0.0/virtualbox-amd64.box"

pytestmark = pytest.mark.integration


@pytest.fixture
def store(mirror_root: Path) -> MirrorStore:
    store = MirrorStore(mirror_root)
    # Random bytes: big enough for ranges to matter (the HTTP layer never looks inside a box).
    add_box(store, "coreos-stable", "1.0.0", data=os.urandom(300_000))
    add_box(store, "coreos-stable", "1.1.0")
    add_box(store, "coreos-alpha", "1.2.0")
    add_box(store, "flatcar-stable", "3815.2.0")
    add_box(store, "flatcar-beta", "3850.1.0")
    return store


@pytest.fixture
def client(store: MirrorStore) -> Iterator[Client]:
    with EmbeddedServer(store.root, port=0) as srv:
        yield Client(srv.url)


def box_bytes(store: MirrorStore) -> bytes:
    return (store.root / BOX.lstrip("/")).read_bytes()


# -- metadata ------------------------------------------------------------------------------------------------


def test_metadata_head_and_get_are_json_with_absolute_urls_from_host(client: Client) -> None:
    status, headers, body = client.request("HEAD", "/coreos-stable", {"Accept": "application/json"})
    assert status == 200 and body == b""
    assert headers["Content-Type"].startswith("application/json")
    status, headers, body = client.request("GET", "/coreos-stable", {"Host": "mirror.example:9000"})
    doc = json.loads(body)
    assert doc["name"] == "coreos-stable"
    assert [v["version"] for v in doc["versions"]] == ["1.0.0", "1.1.0"]
    assert doc["versions"][0]["providers"][0]["url"] == f"http://mirror.example:9000{BOX}"


def test_metadata_json_suffix_and_base_url(store: MirrorStore) -> None:
    with EmbeddedServer(store.root, port=0, base_url="http://10.0.2.2:8080/") as srv:
        status, _, body = Client(srv.url).request("GET", "/flatcar-stable.json")
    assert status == 200
    provider = json.loads(body)["versions"][0]["providers"][0]
    assert provider["url"] == "http://10.0.2.2:8080/flatcar-stable/3815.2.0/virtualbox-amd64.box"
    assert provider["checksum_type"] == "sha256" and len(provider["checksum"]) == 64


def test_metadata_odd_host_header_falls_back_to_the_socket_address(client: Client) -> None:
    status, _, body = client.request("GET", "/coreos-stable", {"Host": 'evil"<x>'})
    url = json.loads(body)["versions"][0]["providers"][0]["url"]
    assert status == 200 and url == f"http://127.0.0.1:{client.port}{BOX}"


def test_seed_names_answer_the_newest_version_of_the_channel(client: Client) -> None:
    def seed(path: str) -> tuple[str, list[str]]:
        status, headers, body = client.request("GET", path)
        assert status == 200, (path, body)
        assert headers["Content-Type"].startswith("application/json")
        doc = json.loads(body)
        return doc["name"], [v["version"] for v in doc["versions"]]

    assert seed("/coreos_production_vagrant.json") == ("coreos-stable", ["1.1.0"])
    assert seed("/alpha/coreos_production_vagrant.json") == ("coreos-alpha", ["1.2.0"])
    assert seed("/beta/flatcar_production_vagrant.json") == ("flatcar-beta", ["3850.1.0"])
    assert seed("/stable/amd64-usr/current/coreos_production_vagrant.json") == ("coreos-stable", ["1.1.0"])
    assert seed("/stable/amd64-usr/1.0.0/coreos_production_vagrant.json") == ("coreos-stable", ["1.0.0"])
    status, _, body = client.request("GET", "/stable/amd64-usr/9.9.9/coreos_production_vagrant.json")
    assert status == 404 and b"9.9.9" in body and b"1.1.0" in body


def test_seed_name_without_stable_uses_the_only_channel_else_names_the_choices(mirror_root: Path) -> None:
    store = MirrorStore(mirror_root)
    add_box(store, "flatcar-lts", "3510.3.0")
    with EmbeddedServer(store.root, port=0) as srv:
        status, _, body = Client(srv.url).request("GET", "/flatcar_production_vagrant.json")
        assert status == 200 and json.loads(body)["name"] == "flatcar-lts"
        add_box(store, "flatcar-beta", "3850.1.0")
        status, _, body = Client(srv.url).request("GET", "/flatcar_production_vagrant.json")
    assert status == 404
    assert b"/lts/flatcar_production_vagrant.json" in body and b"/beta/flatcar_production_vagrant.json" in body


def test_metadata_ignores_range(client: Client) -> None:
    status, _, body = client.request("GET", "/coreos-stable", {"Range": "bytes=10-"})
    assert status == 200 and json.loads(body)["name"] == "coreos-stable"


# -- box files -----------------------------------------------------------------------------------------------
def test_box_get_and_head(client: Client, store: MirrorStore) -> None:
    data = box_bytes(store)
    status, headers, body = client.request("GET", BOX)
    assert status == 200 and body == data
    assert int(headers["Content-Length"]) == len(data)
    assert headers["Content-Type"] == "application/octet-stream"  # not JSON: Vagrant must see a box
    assert headers["ETag"] and headers["Last-Modified"] and headers["Accept-Ranges"] == "bytes"
    status, head_headers, body = client.request("HEAD", BOX)
    assert status == 200 and body == b""
    assert head_headers["Content-Length"] == str(len(data)) and head_headers["ETag"] == headers["ETag"]


def test_single_range_is_206_with_content_range(client: Client, store: MirrorStore) -> None:
    data = box_bytes(store)
    status, headers, body = client.request("GET", BOX, {"Range": "bytes=100-199"})
    assert status == 206 and body == data[100:200]
    assert headers["Content-Range"] == f"bytes 100-199/{len(data)}"
    status, headers, body = client.request("GET", BOX, {"Range": "bytes=1000-"})
    assert status == 206 and body == data[1000:]
    status, headers, body = client.request("GET", BOX, {"Range": "bytes=-50"})
    assert status == 206 and body == data[-50:]


def test_if_range_with_our_etag_or_date_resumes_else_sends_everything(client: Client, store: MirrorStore) -> None:
    data = box_bytes(store)
    _, headers, _ = client.request("HEAD", BOX)
    for validator in (headers["ETag"], headers["Last-Modified"]):
        status, _, body = client.request("GET", BOX, {"Range": "bytes=10-", "If-Range": validator})
        assert (status, body) == (206, data[10:]), validator
    stale = ['"0-0"', formatdate(1_000_000_000, usegmt=True), f"W/{headers['ETag']}"]
    for validator in stale:
        status, _, body = client.request("GET", BOX, {"Range": "bytes=10-", "If-Range": validator})
        assert (status, body) == (200, data), validator


def test_unsatisfiable_bounded_range_is_416(client: Client, store: MirrorStore) -> None:
    size = len(box_bytes(store))
    status, headers, _ = client.request("GET", BOX, {"Range": f"bytes={size + 10}-{size + 20}"})
    assert status == 416 and headers["Content-Range"] == f"bytes */{size}"


def test_open_range_from_the_end_answers_the_whole_box(client: Client, store: MirrorStore) -> None:
    """What curl --continue-at - sends for a complete (or longer) leftover file: 200 with the full length,
    which curl takes as "already downloaded" (or restarts) instead of failing on a 416."""
    data = box_bytes(store)
    for start in (len(data), len(data) + 5):
        status, headers, body = client.request("GET", BOX, {"Range": f"bytes={start}-"})
        assert status == 200 and body == data
        assert "Content-Range" not in headers


def test_multiple_ranges_answer_the_whole_box(client: Client, store: MirrorStore) -> None:
    status, _, body = client.request("GET", BOX, {"Range": "bytes=0-1,5-9"})
    assert status == 200 and body == box_bytes(store)


@pytest.mark.parametrize("value", ["bytes=-0", "bytes=-000", "BYTES = -0"])
def test_a_suffix_of_zero_bytes_is_416(client: Client, store: MirrorStore, value: str) -> None:
    size = len(box_bytes(store))
    status, headers, body = client.request("GET", BOX, {"Range": value})
    assert (status, headers["Content-Range"], body) == (416, f"bytes */{size}", b"")


@pytest.mark.parametrize("value", ["items=0-1", "garbage", "=0-1", "pages=-5"])
def test_an_unknown_range_unit_is_ignored(client: Client, store: MirrorStore, value: str) -> None:
    """RFC 9110 §14.2: a range unit the server does not support is ignored, not refused."""
    status, headers, body = client.request("GET", BOX, {"Range": value})
    assert (status, body) == (200, box_bytes(store)) and "Content-Range" not in headers


# What HTTP allows in a header value (RFC 9110 §5.5: visible ASCII, space, tab and obs-text); aiohttp's parser
# refuses the rest with a 400 before the mirror sees it.
FIELD_VALUE_CHARS = "".join(map(chr, [0x09, *range(0x20, 0x7F), *range(0x80, 0x100)]))
CONTENT_RANGE_RE = re.compile(r"bytes ([0-9]+)-([0-9]+)/([0-9]+)")
RANGE_LIKE = st.from_regex(
    r"(bytes|Bytes|items|)[ ]?=?[ ]?[0-9]{0,7}[ ]?-?[ ]?-?[0-9]{0,7}(,[0-9]{0,6}-[0-9]{0,6})?", fullmatch=True
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.one_of(RANGE_LIKE, st.text(FIELD_VALUE_CHARS, max_size=40)))
def test_any_range_header_gets_the_whole_box_a_part_of_it_or_416(
    client: Client, store: MirrorStore, value: str
) -> None:
    data = box_bytes(store)
    status, headers, body = client.request("GET", BOX, {"Range": value})
    assert status in (200, 206, 416), (value, status)
    if status == 200:
        assert body == data and "Content-Range" not in headers
    elif status == 206:
        found = CONTENT_RANGE_RE.fullmatch(headers["Content-Range"])
        assert found is not None, headers["Content-Range"]
        first, last, total = map(int, found.groups())
        assert 0 <= first <= last < total == len(data)
        assert body == data[first : last + 1] and int(headers["Content-Length"]) == len(body)
    else:
        assert headers["Content-Range"] == f"bytes */{len(data)}" and body == b""
    if value.partition("=")[0].strip().lower() != "bytes":
        assert status == 200, value
    single = re.fullmatch(r"bytes=([0-9]*)-([0-9]*)", value, re.IGNORECASE)
    if single and any(single.groups()):
        assert (status, body) == expected_single_range(*single.groups(), data), value


def expected_single_range(first: str, last: str, data: bytes) -> tuple[int, bytes]:
    """RFC 9110 §14.1.2 for one well-formed byte range, with the mirror's choice of 200 (not 416) for an open
    range from the end (what `curl --continue-at -` sends)."""
    size = len(data)
    if not first:  # a suffix
        return (416, b"") if int(last) == 0 else (206, data[-int(last) :])
    if last and int(last) < int(first):
        return 416, b""
    if int(first) >= size:
        return (416, b"") if last else (200, data)
    return 206, data[int(first) : int(last) + 1 if last else size]


def test_fifty_concurrent_downloads_are_identical(client: Client, store: MirrorStore) -> None:
    expected = hashlib.sha256(box_bytes(store)).hexdigest()

    def fetch(_: int) -> str:
        status, _, body = client.request("GET", BOX)
        assert status == 200
        return hashlib.sha256(body).hexdigest()

    with ThreadPoolExecutor(max_workers=50) as pool:
        digests = list(pool.map(fetch, range(50)))
    assert digests == [expected] * 50


# -- what is never served ------------------------------------------------------------------------------------
def test_unknown_paths_are_404_with_a_short_text_body(client: Client) -> None:
    for path in ("/nope", "/coreos-stable/9.9.9/virtualbox-amd64.box", "/a/b/c/d/e", "/favicon.ico"):
        status, headers, body = client.request("GET", path)
        assert status == 404, path
        assert headers["Content-Type"].startswith("text/plain") and 0 < len(body) < 200


@pytest.mark.parametrize(
    "path",
    [
        "/" + "a" * 256,
        "/" + "a" * 300 + ".json",
        "/" + "a" * 300 + "/1.0.0/virtualbox-amd64.box",
        "/coreos-stable/1.0.0/" + "b" * 400,
        "/" + "%C3%A9" * 128,
    ],
)
def test_a_name_longer_than_any_file_name_is_404(client: Client, path: str) -> None:
    status, _, body = client.request("GET", path)
    assert status == 404 and 0 < len(body) < 200


SEGMENT = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=300),
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,299}", fullmatch=True),  # the shape of a box name or version
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(segments=st.lists(SEGMENT, min_size=1, max_size=5))
@example(segments=["a" * 256]).via("a name longer than any file name")
def test_any_path_is_answered_without_a_server_error(client: Client, segments: list[str]) -> None:
    path = "/" + "/".join(quote(segment, safe="") for segment in segments)
    status, _, _ = client.request("GET", path)
    assert status < 500, path


def test_parts_records_and_dot_dirs_are_never_served(client: Client, store: MirrorStore) -> None:
    version_dir = store.root / "coreos-stable" / "1.0.0"
    (version_dir / "virtualbox-amd64.box.part").write_bytes(b"partial")
    (version_dir / "upstream").mkdir()
    (version_dir / "upstream" / "coreos_production_vagrant.json").write_text("{}")
    (store.root / ".discovery").mkdir(exist_ok=True)
    (store.root / ".discovery" / "state.json").write_text("{}")
    for path in (
        f"{BOX}.part",
        "/coreos-stable/1.0.0/virtualbox-amd64.record.json",
        "/coreos-stable/1.0.0/upstream/coreos_production_vagrant.json",
        "/.discovery/state.json",
        "/.discovery",
        "/coreos-stable/1.0.0/",
    ):
        status, _ = client.raw(f"GET {path} HTTP/1.1")
        assert status == 404, path


@pytest.mark.parametrize(
    "path",
    [
        "/../../../../etc/passwd",
        "/coreos-stable/1.0.0/../../../../etc/passwd",
        "/coreos-stable/1.0.0/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        "/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/coreos-stable/%2e%2e/%2e%2e/etc/passwd",
        "/..%2f..%2f..%2fetc%2fpasswd",
        "//etc/passwd",
        "/etc/passwd",
        "/coreos-stable/1.0.0/%2Fetc%2Fpasswd",
        "/coreos-stable/1.0.0/virtualbox-amd64.box%00.json",
        "http://127.0.0.1/../etc/passwd",
    ],
)
def test_traversal_attempts_are_refused(client: Client, path: str) -> None:
    status, body = client.raw(f"GET {path} HTTP/1.1")
    assert status in (400, 403, 404), path
    assert b"root:" not in body


def test_symlink_escaping_the_root_is_not_served(client: Client, store: MirrorStore, tmp_path: Path) -> None:
    """Such a box is left out of the catalog (as `lab mirror list` and `verify` leave it out): 404."""
    outside = tmp_path / "outside.box"
    outside.write_bytes(b"secret bytes outside the mirror root")
    box = store.root / BOX.lstrip("/")
    box.unlink()
    os.symlink(outside, box)
    status, body = client.raw(f"GET {BOX} HTTP/1.1")
    assert status == 404 and b"secret" not in body


def test_symlink_inside_the_root_is_served(client: Client, store: MirrorStore) -> None:
    box = store.root / BOX.lstrip("/")
    data = box.read_bytes()
    target = store.root / "coreos-stable" / "1.0.0" / "kept.bin"
    box.rename(target)
    os.symlink(target, box)
    status, _, body = client.request("GET", BOX)
    assert status == 200 and body == data


# -- index ---------------------------------------------------------------------------------------------------
def test_index_lists_boxes_with_copy_paste_commands(client: Client) -> None:
    status, headers, body = client.request("GET", "/", {"Host": "mirror.example:9000"})
    page = body.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "vagrant box add http://mirror.example:9000/coreos-stable" in page
    assert "vagrant box add --box-version 1.1.0 http://mirror.example:9000/coreos-stable" in page
    assert "vagrant box add http://mirror.example:9000/flatcar-stable" in page


def test_a_server_that_cannot_start_says_so_instead_of_a_url_with_port_0(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server thread imports aiohttp lazily (for the CLI's start-up time); a failure there reaches start()."""
    monkeypatch.setitem(sys.modules, "aiohttp", None)  # `from aiohttp import web` now raises ImportError
    with pytest.raises(ImportError):
        EmbeddedServer(tmp_path, host="127.0.0.1", port=0).start()
