"""Decisions the mirror makes without a server: Range/If-Range handling, --base-url, index escaping."""

from __future__ import annotations

from email.utils import formatdate

import pytest
from harness.boxes import add_box

from coreos_lab.cli.options import check_base_url, check_root
from coreos_lab.errors import BadInput
from coreos_lab.mirror.http import describe, effective_headers, if_range_matches
from coreos_lab.mirror.layout import render_index
from coreos_lab.mirror.store import MirrorStore
from coreos_lab.server import name_taken


def test_effective_headers_decisions() -> None:
    size, etag, mtime = 1000, "abc-3e8", 1_700_000_000.75
    date = formatdate(1_700_000_001, usegmt=True)  # Last-Modified: the mtime rounded up
    assert effective_headers({}, size=size, etag=etag, mtime=mtime) is None
    assert effective_headers({"Range": "bytes=5-"}, size=size, etag=etag, mtime=mtime) is None
    kept = effective_headers({"Range": "bytes=5-", "If-Range": date}, size=size, etag=etag, mtime=mtime)
    assert kept is not None and kept["Range"] == "bytes=5-" and "If-Range" not in kept
    for headers in (
        {"Range": "bytes=1000-"},
        {"Range": "bytes = 2000 -"},
        {"Range": "bytes=0-1,4-5"},
        {"Range": "bytes=5-", "If-Range": '"other"'},
    ):
        view = effective_headers(headers, size=size, etag=etag, mtime=mtime)
        assert view is not None and "Range" not in view, headers
    assert if_range_matches('"abc-3e8"', etag=etag, mtime=mtime)
    assert not if_range_matches('W/"abc-3e8"', etag=etag, mtime=mtime)
    assert not if_range_matches("not a date", etag=etag, mtime=mtime)


@pytest.mark.parametrize("url", ["10.0.2.2:8080", "ftp://x", "http://", "http://h/?q=1", "http://h:99999"])
def test_bad_base_urls_are_refused(url: str) -> None:
    with pytest.raises(BadInput, match="--base-url"):
        check_base_url(url)


def test_base_url_trailing_slash_is_dropped() -> None:
    assert check_base_url("http://10.0.2.2:8080/boxes/") == "http://10.0.2.2:8080/boxes"


def test_index_escapes_what_it_shows(mirror_root) -> None:
    store = MirrorStore(mirror_root)
    add_box(store, "coreos-stable", "1.0.0")
    page = render_index(store.entries(), 'http://x"><script>')
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_missing_root_is_bad_input(tmp_path) -> None:
    with pytest.raises(BadInput, match="does not exist"):
        check_root(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(BadInput, match="is not a directory"):
        check_root(tmp_path / "file")


def test_names_other_routes_take_are_not_announced_but_said_to_be_unservable(mirror_root) -> None:
    store = MirrorStore(mirror_root)
    token_like = "0123456789abcdef" * 2
    for name in ("coreos-stable", "new", "v2", token_like):
        add_box(store, name, "1.0.0")
    announced = describe(mirror_root, "http://127.0.0.1:8080", None)
    assert "vagrant box add http://127.0.0.1:8080/coreos-stable" in announced
    for name in ("new", "v2", token_like):
        assert f"/{name}\n" not in announced + "\n" and f"not served: box {name!r}" in announced
    assert name_taken("coreos-stable") is None and name_taken("New") is None
    assert name_taken(token_like.upper()) is None  # the token route takes lowercase hex only
