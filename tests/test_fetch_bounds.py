"""A box fetch against hostile servers on 127.0.0.1: a stall anywhere is an error naming the URL, and a body
without end stops at a cap, leaving nothing in the store.

The read timeout and the cap are lowered for these tests (monkeypatch of the module constants): a stall is then
noticed in a second instead of a minute, and the cap is passed after a few MiB instead of 16 GiB. What is tested
is the outcome, not the time it takes.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from harness.upstream import ReleaseUpstream, keys, upstream

from coreos_lab.errors import LabError
from coreos_lab.mirror import download as download_module
from coreos_lab.mirror import upstream as upstream_module
from coreos_lab.mirror.fetch import fetch_box
from coreos_lab.mirror.store import BoxKey, MirrorStore

__all__ = ["keys", "upstream"]  # the fixtures, imported for this module's tests

pytestmark = pytest.mark.integration

KEY = BoxKey("flatcar-stable", "3815.2.0", "virtualbox")
BOX = b"\x1f\x8b" + os.urandom(300_000)  # incompressible: the bytes before a stall reach the part
CAP = 2 << 20


@pytest.fixture
def short_read_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(download_module, "READ_TIMEOUT", 1.0)
    monkeypatch.setattr(upstream_module, "READ_TIMEOUT", 1.0)


@pytest.fixture
def small_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(download_module, "SIZE_CAP", CAP)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) but never answers a request."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener.getsockname()[1]


class _Endless(BaseHTTPRequestHandler):
    """200 without Content-Length (HTTP/1.0: the body ends with the connection), and bytes until the client
    hangs up."""

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        chunk = os.urandom(1 << 16)
        try:
            while True:
                self.wfile.write(chunk)
        except OSError:
            pass  # the client hung up: what is expected


@pytest.fixture
def endless() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Endless)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="endless", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/flatcar_production_vagrant.box"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def store_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


# -- a stall is an error naming the URL ----------------------------------------------------------------------


def test_a_box_body_that_stalls_names_the_box_url_and_keeps_the_part(
    mirror_root: Path, upstream: ReleaseUpstream, short_read_timeout: None
) -> None:
    release = upstream.publish("flatcar", "stable", "3815.2.0", box=BOX)
    upstream.bincache.hold_after[release.box_path] = 100_000
    store = MirrorStore(mirror_root)
    with pytest.raises(LabError) as caught:
        fetch_box(store, upstream=upstream.url)
    box_url = f"{upstream.bincache.url}{release.box_path}"
    assert box_url in caught.value.message and "timed out" in caught.value.message
    assert caught.value.hint is not None and "resume" in caught.value.hint
    assert store.entries() == []
    assert store.part_path(KEY).read_bytes() == BOX[:100_000]  # what arrived, for the next run to resume


def test_a_box_server_that_never_answers_is_a_network_error_naming_the_url(
    mirror_root: Path, upstream: ReleaseUpstream, short_read_timeout: None, silent_port: int
) -> None:
    box_url = f"http://127.0.0.1:{silent_port}/flatcar_production_vagrant.box"
    upstream.publish("flatcar", "stable", "3815.2.0", box=BOX, box_url=box_url)
    store = MirrorStore(mirror_root)
    with pytest.raises(LabError, match=f"cannot download {box_url}: .*timed out"):
        fetch_box(store, upstream=upstream.url)
    assert store_files(mirror_root) == []


@pytest.mark.parametrize("name", ["version.txt", "flatcar_production_vagrant.json"])
def test_a_metadata_file_that_stalls_names_its_url(
    mirror_root: Path, upstream: ReleaseUpstream, short_read_timeout: None, name: str
) -> None:
    upstream.publish("flatcar", "stable", "3815.2.0", box=BOX)
    path = f"/stable/amd64-usr/{'current' if name == 'version.txt' else '3815.2.0'}/{name}"
    upstream.release.hold_after[path] = 0  # the headers, then nothing
    with pytest.raises(LabError, match=f"cannot download {upstream.url}{path}: .*timed out"):
        fetch_box(MirrorStore(mirror_root), upstream=upstream.url)
    assert store_files(mirror_root) == []


# -- a body without end stops at the cap ---------------------------------------------------------------------


def test_a_box_without_content_length_stops_at_the_cap_and_leaves_nothing(
    mirror_root: Path, upstream: ReleaseUpstream, small_cap: None, endless: str
) -> None:
    upstream.publish("flatcar", "stable", "3815.2.0", box=BOX, box_url=endless)
    store = MirrorStore(mirror_root)
    with pytest.raises(LabError) as caught:
        fetch_box(store, upstream=upstream.url)
    message = caught.value.message
    assert message.startswith(f"{endless}: the server sent more than the cap of {CAP} bytes")
    assert "nothing kept" in message
    assert store.entries() == [] and store_files(mirror_root) == []


def test_a_box_announced_larger_than_the_cap_is_refused_before_any_byte_is_written(
    mirror_root: Path, upstream: ReleaseUpstream, small_cap: None
) -> None:
    big = b"\x1f\x8b" + os.urandom(CAP)
    release = upstream.publish("flatcar", "stable", "3815.2.0", box=big)
    store = MirrorStore(mirror_root)
    with pytest.raises(LabError, match=f"announces {len(big)} bytes, over the cap of {CAP} bytes"):
        fetch_box(store, upstream=upstream.url)
    assert store.entries() == [] and store_files(mirror_root) == []
    assert len(upstream.bincache.seen(release.box_path)) == 1


def test_a_box_just_under_the_cap_is_fetched(mirror_root: Path, upstream: ReleaseUpstream, small_cap: None) -> None:
    box = b"\x1f\x8b" + os.urandom(CAP - 2)
    upstream.publish("flatcar", "stable", "3815.2.0", box=box)
    store = MirrorStore(mirror_root)
    result = fetch_box(store, upstream=upstream.url)
    assert result.action == "added" and store.artifact_path(KEY).read_bytes() == box
