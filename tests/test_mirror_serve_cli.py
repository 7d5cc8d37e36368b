"""`lab mirror serve` as a user runs it: a real process, its announce line, access log, live view, errors."""

from __future__ import annotations

import json
import os
import signal
import socket
import urllib.request
from pathlib import Path

import pytest
from harness import processes
from harness.boxes import add_box
from harness.cli import lab
from harness.mirror import mirror_server
from harness.terminal import on_a_terminal

from coreos_lab.errors import ExitCode
from coreos_lab.mirror.store import MirrorStore

pytestmark = pytest.mark.integration


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=30) as resp:
        return resp.status, resp.read()


def test_serve_announces_logs_each_request_and_stops_cleanly_on_sigterm(mirror_root: Path) -> None:
    store = MirrorStore(mirror_root)
    add_box(store, "coreos-stable", "1.0.0")
    with mirror_server(mirror_root) as srv:
        assert f"vagrant box add {srv.url}/coreos-stable" in "\n".join(srv.lines)
        status, body = fetch(f"{srv.url}/coreos-stable", {"User-Agent": 'odd "agent"\tx'})
        assert status == 200 and json.loads(body)["name"] == "coreos-stable"
        fetch(f"{srv.url}/coreos-stable/1.0.0/virtualbox-amd64.box")
        (meta_line,) = srv.access_lines("/coreos-stable")
        (box_line,) = srv.access_lines("/coreos-stable/1.0.0/virtualbox-amd64.box")
        size = store.artifact_path(store.entries()[0].key).stat().st_size
        assert meta_line.startswith("127.0.0.1 [") and '"GET /coreos-stable HTTP/1.1" 200 ' in meta_line
        assert meta_line.endswith('"odd \\"agent\\"\\tx"')  # client text cannot forge or colour log lines
        assert f'"GET /coreos-stable/1.0.0/virtualbox-amd64.box HTTP/1.1" 200 {size} ' in box_line
        assert srv.stop() == 0
    assert srv.lines[-1] == "stopped"


def test_ctrl_c_stops_cleanly(mirror_root: Path) -> None:
    with mirror_server(mirror_root) as srv:
        os.kill(srv.proc.pid, signal.SIGINT)
        assert srv.proc.wait(timeout=15) == 0
    assert srv.lines[-1] == "stopped"


def test_base_url_is_written_into_metadata(mirror_root: Path) -> None:
    add_box(MirrorStore(mirror_root), "flatcar-stable", "3815.2.0")
    with mirror_server(mirror_root, "--base-url", "http://10.0.2.2:8080/") as srv:
        _, body = fetch(f"{srv.url}/flatcar-stable")
        assert "metadata URLs under http://10.0.2.2:8080" in srv.lines[0]
    url = json.loads(body)["versions"][0]["providers"][0]["url"]
    assert url == "http://10.0.2.2:8080/flatcar-stable/3815.2.0/virtualbox-amd64.box"


def test_missing_root_is_a_usage_error(tmp_path: Path) -> None:
    run = lab("mirror", "serve", "--root", tmp_path / "nope", "--port", "0")
    assert run.returncode == ExitCode.USAGE
    assert "nope" in run.stderr and "does not exist" in run.stderr


def test_bad_base_url_is_a_usage_error(mirror_root: Path) -> None:
    run = lab("mirror", "serve", "--root", mirror_root, "--port", "0", "--base-url", "10.0.2.2:8080")
    assert run.returncode == ExitCode.USAGE
    assert "--base-url" in run.stderr and "10.0.2.2:8080" in run.stderr


def test_port_in_use_is_a_clear_error(mirror_root: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        run = lab("mirror", "serve", "--root", mirror_root, "--port", str(port), timeout=60)
    assert run.returncode == ExitCode.ERROR
    assert f"cannot listen on 127.0.0.1:{port}" in run.stderr and "--port" in run.stderr


SERVE_ON_A_TERMINAL = {"TERM": "xterm-256color", "COLUMNS": "160"}


def announced_port(screen: bytes) -> int:
    return int(screen.split(b"http://127.0.0.1:")[1].split(b":")[0].split(b" ")[0])


def test_live_view_shows_a_download_in_progress_on_a_terminal(mirror_root: Path) -> None:
    """stderr on a pseudo-terminal; a client that stops reading keeps one download in progress."""
    store = MirrorStore(mirror_root)
    add_box(store, "coreos-stable", "1.0.0", data=os.urandom(24 * 1024 * 1024))
    argv = ["mirror", "serve", "--root", str(mirror_root), "--port", "0"]
    with on_a_terminal(argv, SERVE_ON_A_TERMINAL) as terminal:
        terminal.read_until(b"Ctrl-C stops", timeout=20)
        with socket.create_connection(("127.0.0.1", announced_port(terminal.screen))) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            sock.sendall(b"GET /coreos-stable/1.0.0/virtualbox-amd64.box HTTP/1.1\r\nHost: x\r\n\r\n")
            sock.recv(65536)  # the headers and a little body, then the client stalls
            terminal.read_until(b"coreos-stable/1.0.0/virtualbox-amd64.box", timeout=20)
            assert b"MB" in terminal.screen
        processes.stop(terminal.proc, timeout=15)
    assert terminal.proc.returncode == 0


def test_help_lists_serve() -> None:
    run = lab("mirror", "--help")
    assert run.returncode == 0 and "serve" in run.stdout
    run = lab("mirror", "serve", "--help")
    assert "--base-url" in run.stdout and "127.0.0.1" in run.stdout and "8080" in run.stdout


def test_one_server_answers_boxes_and_discovery(mirror_root: Path) -> None:
    add_box(MirrorStore(mirror_root), "coreos-stable", "1.0.0")
    with mirror_server(mirror_root) as srv:
        status, body = fetch(f"{srv.url}/new?size=3")
        token_url = body.decode().strip()
        assert status == 200 and token_url.startswith(f"{srv.url}/")
        status, body = fetch(f"{token_url}/_config/size")
        assert status == 200 and json.loads(body)["node"]["value"] == "3"
        status, body = fetch(f"{srv.url}/coreos-stable")
        assert status == 200 and json.loads(body)["name"] == "coreos-stable"


def test_host_names_the_address_to_listen_on(mirror_root: Path) -> None:
    """`--host localhost` (which resolves to 127.0.0.1): announced under that name, answering on its address."""
    add_box(MirrorStore(mirror_root), "coreos-stable", "1.0.0")
    with mirror_server(mirror_root, "--host", "localhost") as srv:
        assert srv.url.startswith("http://localhost:"), srv.lines
        port = int(srv.url.rsplit(":", 1)[1])
        status, body = fetch(f"http://127.0.0.1:{port}/coreos-stable")
        assert status == 200 and json.loads(body)["name"] == "coreos-stable"
        assert srv.stop() == 0


BOX = "/coreos-stable/1.0.0/virtualbox-amd64.box"


def serve_on_a_terminal(mirror_root: Path, *args: str) -> tuple[int, bytes]:
    """`lab mirror serve ARGS` with stderr on a pseudo-terminal: one box download, then SIGTERM. Returns the exit
    code and everything the server wrote to the terminal, read to its end."""
    argv = ["mirror", "serve", "--root", str(mirror_root), "--port", "0", *args]
    with on_a_terminal(argv, SERVE_ON_A_TERMINAL) as terminal:
        terminal.read_until(b"Ctrl-C stops", timeout=20)
        fetch(f"http://127.0.0.1:{announced_port(terminal.screen)}{BOX}")
        terminal.read_until(f'"GET {BOX} HTTP/1.1" 200'.encode(), timeout=20)
        processes.stop(terminal.proc, timeout=15)
        terminal.read_until(None, timeout=20)
    return terminal.proc.returncode, terminal.screen


@pytest.mark.parametrize(("args", "drawn"), [((), True), (("--no-live",), False)], ids=["default", "no-live"])
def test_no_live_draws_nothing_on_a_terminal(mirror_root: Path, args: tuple[str, ...], drawn: bool) -> None:
    """On a terminal the live view is on by default: rich hides the cursor while it draws. `--no-live` leaves
    plain lines only: the announce, the access log, "stopped"."""
    add_box(MirrorStore(mirror_root), "coreos-stable", "1.0.0")
    returncode, screen = serve_on_a_terminal(mirror_root, *args)
    assert returncode == 0
    assert (b"\x1b[?25l" in screen) is drawn, screen.decode(errors="replace")
    assert f'"GET {BOX} HTTP/1.1" 200'.encode() in screen and screen.rstrip().endswith(b"stopped")


@pytest.mark.parametrize("value", ["nan", "inf", "-5", "soon"])
def test_a_wait_timeout_that_is_no_number_of_seconds_is_a_usage_error(mirror_root: Path, value: str) -> None:
    run = lab("mirror", "serve", "--root", mirror_root, "--port", "0", env={"LAB_DISCOVERY_WAIT_TIMEOUT": value})
    assert run.returncode == ExitCode.USAGE
    assert f"LAB_DISCOVERY_WAIT_TIMEOUT={value!r}" in run.stderr and "unexpected" not in run.stderr
