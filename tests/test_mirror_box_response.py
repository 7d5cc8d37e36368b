"""Box files over HTTP, beyond Range (test_mirror_http.py): conditional requests, methods, and the body sent in
pieces that the live view follows. In-process server (EmbeddedServer), real HTTP."""

from __future__ import annotations

import os
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path
from typing import ClassVar

import pytest
from harness.boxes import add_box
from harness.http_client import Client
from harness.waiting import wait_until

from coreos_lab.mirror import http as mirror_http
from coreos_lab.mirror.store import MirrorStore
from coreos_lab.mirror.transfers import Transfer, TransferTracker
from coreos_lab.server import EmbeddedServer

BOX = "/coreos-stable/1.0.0/virtualbox-amd64.box"
DATA = os.urandom(250_000)

pytestmark = pytest.mark.integration


class RecordingTracker(TransferTracker):
    """Every transfer begun and every piece sent (class-wide: the server builds its own tracker)."""

    transfers: ClassVar[list[Transfer]] = []
    pieces: ClassVar[list[int]] = []

    def begin(self, client: str, label: str, total: int) -> Transfer:
        transfer = super().begin(client, label, total)
        RecordingTracker.transfers.append(transfer)
        return transfer

    def _advanced(self, transfer: Transfer, count: int) -> None:
        super()._advanced(transfer, count)
        RecordingTracker.pieces.append(count)


@pytest.fixture
def server(mirror_root: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[EmbeddedServer]:
    add_box(MirrorStore(mirror_root), "coreos-stable", "1.0.0", data=DATA)
    RecordingTracker.transfers, RecordingTracker.pieces = [], []
    monkeypatch.setattr(mirror_http, "TransferTracker", RecordingTracker)
    monkeypatch.setattr(mirror_http, "SENDFILE_CHUNK", 100_000)
    with EmbeddedServer(mirror_root, port=0) as srv:
        yield srv


def test_the_body_goes_out_in_pieces_the_tracker_follows(server: EmbeddedServer) -> None:
    status, _, body = Client(server.url).request("GET", BOX, {"Range": "bytes=1000-"})
    assert (status, body) == (206, DATA[1000:])
    (transfer,) = RecordingTracker.transfers
    assert transfer.label == BOX.lstrip("/") and transfer.total == len(DATA) - 1000
    # The client can have the last byte before the server's loop counts the piece that carried it.
    pieces = RecordingTracker.pieces
    wait_until(lambda: sum(pieces) == len(DATA) - 1000, lambda: f"the tracker's pieces so far: {pieces}")
    assert pieces == [100_000, 100_000, 49_000] and transfer.sent == len(DATA) - 1000


def test_head_sends_no_body_and_starts_no_transfer(server: EmbeddedServer) -> None:
    status, headers, body = Client(server.url).request("HEAD", BOX)
    assert (status, body) == (200, b"") and headers["Content-Length"] == str(len(DATA))
    assert RecordingTracker.transfers == []


def test_conditional_requests(server: EmbeddedServer) -> None:
    _, headers, _ = Client(server.url).request("HEAD", BOX)
    etag, modified = headers["ETag"], headers["Last-Modified"]
    status, answer, body = Client(server.url).request("GET", BOX, {"If-None-Match": etag})
    assert (status, body) == (304, b"") and answer["ETag"] == etag
    assert Client(server.url).request("GET", BOX, {"If-None-Match": '"other"'})[0] == 200
    assert Client(server.url).request("GET", BOX, {"If-Modified-Since": modified})[0] == 304
    assert Client(server.url).request("GET", BOX, {"If-Match": '"other"'})[0] == 412
    assert Client(server.url).request("GET", BOX, {"If-Match": etag})[2] == DATA
    assert (
        Client(server.url).request("GET", BOX, {"If-Unmodified-Since": formatdate(1_000_000_000, usegmt=True)})[0]
        == 412
    )


def test_only_get_and_head_are_answered(server: EmbeddedServer) -> None:
    status, headers, _ = Client(server.url).request("POST", BOX)
    assert status == 405 and headers["Allow"] == "GET,HEAD"
    assert Client(server.url).request("DELETE", "/coreos-stable")[0] == 405
    status, _, body = Client(server.url).request("POST", "/a/b/c/d/e/f")
    assert (status, body) == (404, b"404: Not Found")
