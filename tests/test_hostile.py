"""`lab mirror serve` against careless and hostile peers: the real server process started by the CLI.

A client that stops reading must not hold a stop; a database another process keeps locked must not block the
event loop or turn into 500s; a read-only mirror is still served. Bounds on waits are about hangs, not speed.
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from harness.boxes import add_box
from harness.mirror import MirrorProcess, mirror_server

from coreos_lab.mirror.store import MirrorStore

pytestmark = pytest.mark.integration

BOX = "/coreos-stable/1.0.0/virtualbox-amd64.box"
# Far below the 2 minutes a stalled client used to hold a stop, far above a few seconds on a loaded machine.
EXIT_BOUND = 40.0


@pytest.fixture
def big_box_root(mirror_root: Path) -> Path:
    # Many times what the socket buffers of a client that never reads can take.
    add_box(MirrorStore(mirror_root), "coreos-stable", "1.0.0", data=os.urandom(32 * 1024 * 1024))
    return mirror_root


@contextmanager
def stalled_download(srv: MirrorProcess) -> Iterator[socket.socket]:
    """A client that asks for a box, reads the first bytes of the answer, and then never reads again."""
    host, port = srv.url.removeprefix("http://").rsplit(":", 1)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        sock.connect((host, int(port)))
        sock.sendall(f"GET {BOX} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        sock.settimeout(30)
        assert sock.recv(12) == b"HTTP/1.1 200"
        yield sock
    finally:
        sock.close()


@pytest.mark.parametrize(
    "signals", [(signal.SIGTERM,), (signal.SIGINT,), (signal.SIGINT, signal.SIGINT)], ids=["term", "int", "int-int"]
)
def test_a_client_that_never_reads_does_not_hold_a_stop(big_box_root: Path, signals: tuple[int, ...]) -> None:
    with mirror_server(big_box_root) as srv, stalled_download(srv):
        for sig in signals:
            os.kill(srv.proc.pid, sig)
        assert srv.proc.wait(timeout=EXIT_BOUND) == 0  # raises TimeoutExpired if the stop hangs
    assert srv.lines[-1] == "stopped"
