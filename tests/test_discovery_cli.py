"""`lab discovery new|show` as a user runs them: a separate process, with and without a server running."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from harness.cli import lab
from harness.etcd import free_port

from coreos_lab.discovery.store import TOKEN_RE
from coreos_lab.errors import ExitCode
from coreos_lab.server import EmbeddedServer

pytestmark = pytest.mark.integration


@pytest.fixture
def dead_url() -> str:
    """A default server address nothing listens on, so no developer's running server is ever used."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture
def server(mirror_root: Path) -> Iterator[EmbeddedServer]:
    with EmbeddedServer(mirror_root, port=0) as srv:
        yield srv


def test_new_without_a_server_stores_the_token_under_the_default_address(mirror_root: Path, dead_url: str) -> None:
    run = lab("discovery", "new", "--size", "5", "--root", mirror_root, env={"LAB_MIRROR_URL": dead_url})
    assert run.returncode == 0, run.stderr
    token_url = run.stdout.strip()
    assert run.stdout.count("\n") == 1 and token_url.startswith(dead_url + "/")
    assert TOKEN_RE.match(token_url.rsplit("/", 1)[1])
    assert "no discovery server is running" in run.stderr
    # The server started later on that address serves it.
    port = int(dead_url.rsplit(":", 1)[1])
    with EmbeddedServer(mirror_root, port=port):
        assert requests.get(f"{token_url}/_config/size", timeout=5).json()["node"]["value"] == "5"


def test_new_asks_the_running_server(server: EmbeddedServer, mirror_root: Path, tmp_path: Path) -> None:
    other_root = tmp_path / "elsewhere"
    run = lab("discovery", "new", "--json", "--root", other_root, env={"LAB_MIRROR_URL": server.url})
    assert run.returncode == 0, run.stderr
    doc = run.json()
    assert doc["source"] == "server" and doc["size"] == 3 and doc["url"] == f"{server.url}/{doc['token']}"
    assert not other_root.exists()  # the server's own store holds it
    assert requests.get(f"{doc['url']}/_config/size", timeout=5).status_code == 200


def test_new_with_an_explicit_server(server: EmbeddedServer, dead_url: str) -> None:
    run = lab("discovery", "new", "--size", "1", "--server", server.url, env={"LAB_MIRROR_URL": dead_url})
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(server.url + "/")


def test_show_lists_size_and_members(server: EmbeddedServer, dead_url: str) -> None:
    token_url = requests.get(f"{server.url}/new?size=3", timeout=5).text
    for member_id, value in (("b1", "m1=http://127.0.0.1:2380"), ("a2", "m2=http://127.0.0.1:2381,m2=http://h:2381")):
        requests.put(f"{token_url}/{member_id}?prevExist=false", data={"value": value}, timeout=5)
    run = lab("discovery", "show", token_url, "--json", env={"LAB_MIRROR_URL": dead_url})
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    assert (doc["size"], doc["registered"], doc["complete"], doc["source"]) == (3, 2, False, "server")
    assert [(m["id"], m["name"]) for m in doc["members"]] == [("b1", "m1"), ("a2", "m2")]
    assert doc["members"][1]["peer_urls"] == ["http://127.0.0.1:2381", "http://h:2381"]
    human = lab("discovery", "show", token_url)
    assert human.returncode == 0
    assert "size 3, 2 registered (waiting for 1 more)" in human.stderr
    assert "m2" in human.stdout and "http://127.0.0.1:2380" in human.stdout


def test_show_reads_the_store_when_no_server_answers(mirror_root: Path, dead_url: str) -> None:
    env = {"LAB_MIRROR_URL": dead_url}
    token_url = lab("discovery", "new", "--size", "2", "--root", mirror_root, env=env).stdout.strip()
    run = lab("discovery", "show", token_url, "--json", "--root", mirror_root, env=env)
    assert run.returncode == 0, run.stderr
    assert run.json()["source"] == "store" and run.json()["size"] == 2 and run.json()["members"] == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["new", "--size", "0"], "invalid discovery size 0"),
        (["new", "--size", "100"], "invalid discovery size 100"),
        (["new", "--server", "ftp://example"], "invalid discovery server 'ftp://example'"),
        (["show", "not-a-url"], "invalid discovery token URL 'not-a-url'"),
    ],
)
def test_bad_input_is_a_usage_error_naming_the_value(args: list[str], message: str, mirror_root: Path) -> None:
    run = lab("discovery", *args, "--root", mirror_root)
    assert run.returncode == ExitCode.USAGE
    assert message in run.stderr and run.stdout == ""


def test_unreachable_server_is_an_error_naming_the_url(mirror_root: Path, dead_url: str) -> None:
    run = lab("discovery", "new", "--server", dead_url, "--root", mirror_root, "--timeout", "3")
    assert run.returncode == ExitCode.ERROR
    assert f"discovery service at {dead_url}/new?size=3 is unreachable (connection refused)" in run.stderr
    assert "lab mirror serve" in run.stderr
    show = lab("discovery", "show", f"{dead_url}/{'a' * 32}", "--root", mirror_root)
    assert show.returncode == ExitCode.ERROR and dead_url in show.stderr


def test_unknown_token_on_a_running_server_is_bad_input(server: EmbeddedServer, mirror_root: Path) -> None:
    run = lab("discovery", "show", f"{server.url}/{'a' * 32}", "--root", mirror_root)
    assert run.returncode == ExitCode.USAGE
    assert f"no discovery token at {server.url}/{'a' * 32}" in run.stderr


def test_a_proxy_in_the_environment_does_not_capture_the_local_server(server: EmbeddedServer, dead_url: str) -> None:
    proxy = {"http_proxy": dead_url, "HTTP_PROXY": dead_url, "no_proxy": "", "NO_PROXY": ""}
    run = lab("discovery", "new", "--server", server.url, env=proxy)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(server.url + "/")
