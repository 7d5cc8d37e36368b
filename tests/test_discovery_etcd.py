"""Real etcd 3.4 members (v2 enabled, loopback ports) bootstrapping through our discovery service."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.etcd import EtcdLauncher, cluster_health, etcd_launcher, free_port, member_names, wait_healthy
from harness.server_process import ServerProcess
from harness.waiting import wait_until

from coreos_lab.discovery import client
from coreos_lab.server import EmbeddedServer

pytestmark = [pytest.mark.integration, pytest.mark.etcd]
__all__ = ["etcd_launcher"]  # the fixture, imported for this module's tests


@pytest.fixture
def server(mirror_root: Path) -> Iterator[EmbeddedServer]:
    with EmbeddedServer(mirror_root, port=0) as srv:
        yield srv


@pytest.mark.parametrize("size", [3, 5])
def test_members_bootstrap_through_a_fresh_token(
    server: EmbeddedServer, etcd_launcher: EtcdLauncher, size: int
) -> None:
    token_url = client.new_token(server.url, size)
    members = etcd_launcher.start_cluster(size, discovery=token_url)
    wait_healthy(members, timeout=60)
    health = cluster_health(members[0])
    assert len(health) == size and all(entry["health"] for entry in health)
    assert sorted(entry["endpoint"] for entry in health) == sorted(m.client_url for m in members)
    expected = sorted(m.name for m in members)
    assert member_names(members[-1]) == expected
    info = client.show(token_url)
    assert info.complete and sorted(m.name for m in info.members) == expected
    assert {url for m in info.members for url in m.peer_urls} == {m.peer_url for m in members}


def _polls_parked(log_text: str, token_url: str) -> int:
    """Long polls on the token that the server logged as waiting (`lab --debug`), i.e. a member's polls for peers."""
    token = token_url.rsplit("/", 1)[1]
    return log_text.count(f"long poll on /{token}/ waits for index")


def test_cluster_forms_across_a_server_restart(mirror_root: Path, etcd_launcher: EtcdLauncher) -> None:
    port = free_port()
    first = ServerProcess(mirror_root, port, env={"LAB_DEBUG": "1"}).start()
    try:
        token_url = client.new_token(first.url, 3)
        m1 = etcd_launcher.start("m1", discovery=token_url)
        wait_until(
            lambda: _polls_parked(first.log_path.read_text(), token_url) >= 1,
            lambda: (
                f"m1's long poll for peers on the server:\n{first.log_path.read_text()[-3000:]}\n{m1.log()[-3000:]}"
            ),
        )
    finally:
        first.kill()  # a crash, not a clean stop: only what was committed to disk survives
    assert m1.running()
    with ServerProcess(mirror_root, port):
        assert [m.name for m in client.show(token_url).members] == ["m1"]
        others = [etcd_launcher.start(name, discovery=token_url) for name in ("m2", "m3")]
        wait_healthy([m1, *others], timeout=90)
        assert member_names(m1) == ["m1", "m2", "m3"]
        assert all(entry["health"] for entry in cluster_health(others[0]))


def test_reusing_a_token_for_a_fresh_cluster_exits_with_cluster_is_full(
    server: EmbeddedServer, etcd_launcher: EtcdLauncher
) -> None:
    token_url = client.new_token(server.url, 3)
    wait_healthy(etcd_launcher.start_cluster(3, discovery=token_url), timeout=60)
    # A destroyed and recreated lab that kept its old token: fresh data dirs, new member ids.
    late = etcd_launcher.start("again1", discovery=token_url)
    assert late.wait_exit(timeout=30) != 0
    assert "cluster is full" in late.log()
    assert len(client.show(token_url).members) == 3  # the late member never registered


def test_a_size_without_enough_members_keeps_waiting(
    mirror_root: Path, etcd_launcher: EtcdLauncher, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("LAB_DISCOVERY_WAIT_TIMEOUT", "0.5")
    caplog.set_level(logging.DEBUG, logger="coreos_lab.discovery.api")
    with EmbeddedServer(mirror_root, port=0) as server:
        token_url = client.new_token(server.url, 2)
        lonely = etcd_launcher.start("m1", discovery=token_url)
        # A second poll for peers: the first one ended empty at the wait timeout and m1 asked again, still waiting.
        wait_until(
            lambda: _polls_parked("\n".join(r.getMessage() for r in list(caplog.records)), token_url) >= 2,
            lambda: f"m1 polling again for peers:\n{lonely.log()[-3000:]}",
        )
        assert lonely.running() and not lonely.healthy()
        info = client.show(token_url)
    assert not info.complete and [m.name for m in info.members] == ["m1"]
