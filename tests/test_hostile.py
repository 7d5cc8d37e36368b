"""`lab mirror serve` against careless and hostile peers: the real server process started by the CLI.

A client that stops reading must not hold a stop; a database another process keeps locked must not block the
event loop or turn into 500s; a read-only mirror is still served. Bounds on waits are about hangs, not speed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.message import Message
from pathlib import Path

import pytest
from harness import processes
from harness.boxes import add_box
from harness.mirror import MirrorProcess, mirror_server
from harness.waiting import wait_until

from coreos_lab.discovery.store import DB_NAME
from coreos_lab.mirror.store import MirrorStore
from coreos_lab.server import EmbeddedServer

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
def stalled_download(url: str) -> Iterator[socket.socket]:
    """A client that asks the server at `url` for a box, reads the first bytes of the answer, and then never
    reads again."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
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
    with mirror_server(big_box_root) as srv, stalled_download(srv.url):
        for sig in signals:
            os.kill(srv.proc.pid, sig)
        assert srv.proc.wait(timeout=EXIT_BOUND) == 0  # raises TimeoutExpired if the stop hangs
    assert srv.lines[-1] == "stopped"


def test_the_embedded_server_also_stops_despite_a_client_that_never_reads(big_box_root: Path) -> None:
    """The server `lab up` runs for the duration of the command."""
    srv = EmbeddedServer(big_box_root, port=0).start()
    try:
        with stalled_download(srv.url):
            srv.stop()  # joins the server's thread for at most 30 s
            assert not srv.running
    finally:
        srv.stop()


@contextmanager
def database_locked_by_another_process(root: Path) -> Iterator[None]:
    """A second process that takes the discovery database's write lock and keeps it until told to stop."""
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(root / ".discovery" / DB_NAME)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        yield
    finally:
        holder.communicate("", timeout=30)  # end of its input: it rolls back and exits


LOCK_HOLDER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
db.execute("UPDATE meta SET value = value WHERE name = 'index'")
print("locked", flush=True)
sys.stdin.read()
"""


def test_a_locked_discovery_database_is_a_retryable_503_and_the_rest_still_answers(mirror_root: Path) -> None:
    add_box(MirrorStore(mirror_root), "coreos-stable", "1.0.0")
    with mirror_server(mirror_root) as srv:
        token_url = urlopen(f"{srv.url}/new?size=1").text
        with database_locked_by_another_process(mirror_root):
            busy = urlopen(f"{srv.url}/new?size=3")
            assert busy.status == 503 and int(busy.headers["Retry-After"]) > 0
            assert "locked by another process" in busy.text
            assert urlopen(f"{srv.url}/").status == 200
            assert urlopen(f"{srv.url}/coreos-stable").status == 200
            assert json.loads(urlopen(f"{token_url}/_config/size").text)["node"]["value"] == "1"  # reads go on
        assert urlopen(f"{srv.url}/new?size=3").status == 200  # the client's retry succeeds


def test_a_read_only_mirror_is_served_with_discovery_off(mirror_root: Path) -> None:
    add_box(MirrorStore(mirror_root), "coreos-stable", "1.0.0")
    # A read-only bind mount of the root, in user and mount namespaces of the server's own (no root needed):
    # read-only even for root, as a read-only file system is.
    remount = 'mount --bind "$1" "$1" && mount -o remount,ro,bind "$1" "$1" && shift && exec "$@"'
    argv = [sys.executable, "-m", "coreos_lab", "mirror", "serve", "--root", str(mirror_root), "--port", "0"]
    namespaces = ["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private"]
    proc = subprocess.Popen(
        [*namespaces, "sh", "-c", remount, "sh", str(mirror_root), *argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    srv = MirrorProcess(proc)
    try:
        srv.wait_ready()
        assert urlopen(f"{srv.url}{BOX}").status == 200
        assert urlopen(f"{srv.url}/coreos-stable").status == 200
        off = urlopen(f"{srv.url}/new")
        assert off.status == 503 and "discovery is off" in off.text and "Read-only file system" in off.text
        assert srv.stop() == 0
    finally:
        srv.stop()
    assert any("discovery is off" in line for line in srv.lines)
    assert not (mirror_root / ".discovery").exists()


@dataclass
class Answer:
    status: int
    headers: Message
    text: str


def urlopen(url: str) -> Answer:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return Answer(response.status, response.headers, response.read().decode(errors="replace"))
    except urllib.error.HTTPError as error:
        return Answer(error.code, error.headers, error.read().decode(errors="replace"))


def test_lab_discovery_new_waits_out_a_busy_server(mirror_root: Path) -> None:
    with mirror_server(mirror_root) as srv:
        urlopen(f"{srv.url}/new?size=1")  # the database exists
        with database_locked_by_another_process(mirror_root):
            client = subprocess.Popen(
                [sys.executable, "-m", "coreos_lab", "discovery", "new", "--server", srv.url, "--timeout", "60"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                wait_until(lambda: any('/new?size=3 HTTP/1.1" 503 ' in line for line in srv.lines), "a 503 to lab")
            except BaseException:
                processes.kill(client)
                raise
        out, err = client.communicate(timeout=60)
    assert client.returncode == 0, err
    assert out.startswith(srv.url + "/")
