"""`lab health` against real nodes: sshd + etcd 3.4 in network namespaces (tests/harness/netns.py).

The namespaces have no systemd and no fleet, so these tests select the etcd checks (`--check etcd
--check members`), except one that runs the units and fleet checks against stand-in `systemctl` and
`fleetctl` scripts (mocks of what cannot run here; see FAKE_SYSTEMCTL).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import paramiko
import pytest
from harness import processes
from harness.cli import LabRun, lab, start_lab
from harness.netns import NetnsCluster, keygen, netns_cluster
from harness.waiting import wait_until

from coreos_lab.cluster.ssh import SSHSession, SSHTarget, parse_ssh_config
from coreos_lab.errors import ExitCode
from coreos_lab.proc import CommandResult

pytestmark = [pytest.mark.integration, pytest.mark.etcd, pytest.mark.netns]

ETCD_CHECKS = ("--check", "etcd", "--check", "members")


def health(cluster: NetnsCluster, tmp_path: Path, home: Path, *args: str, nodes: list[int] | None = None) -> LabRun:
    config = cluster.write_ssh_config(tmp_path / "ssh_config", nodes)
    return lab("health", "--ssh-config", config, *args, env={"HOME": str(home)}, timeout=120)


@pytest.mark.parametrize("distro", ["coreos", "flatcar"])
def test_three_nodes_healthy(cluster: NetnsCluster, tmp_path: Path, home: Path, distro: str) -> None:
    cluster.start_all_etcd()
    run = health(cluster, tmp_path, home, "--distro", distro, *ETCD_CHECKS, "--json")
    assert run.returncode == ExitCode.OK, run.stderr
    report = run.json()
    assert report["healthy"] is True
    assert list(report["nodes"]) == ["core-01", "core-02", "core-03"]
    for node in report["nodes"].values():
        assert node["checks"]["etcd"] == {"status": "pass", "detail": "3 of 3 members healthy"}
        assert node["checks"]["members"]["status"] == "pass"
        assert "core-01, core-02, core-03" in node["checks"]["members"]["detail"]
        assert "leader core-0" in node["checks"]["members"]["detail"]
    assert not (home / ".ssh" / "known_hosts").exists()


def test_human_table_on_stderr(cluster: NetnsCluster, tmp_path: Path, home: Path) -> None:
    cluster.start_all_etcd()
    run = health(cluster, tmp_path, home, "--distro", "coreos", *ETCD_CHECKS)
    assert run.returncode == ExitCode.OK, run.stderr
    assert run.stdout == ""
    assert "core-03" in run.stderr and "healthy: 3 nodes" in run.stderr


def test_wrong_member_count_fails_members_check(cluster: NetnsCluster, tmp_path: Path, home: Path) -> None:
    cluster.start_all_etcd()
    run = health(cluster, tmp_path, home, "--distro", "flatcar", "--members", "5", *ETCD_CHECKS, "--json")
    assert run.returncode == ExitCode.UNHEALTHY
    members = run.json()["nodes"]["core-02"]["checks"]["members"]
    assert members["status"] == "fail" and "3 members, expected 5" in members["detail"]


@pytest.mark.parametrize("distro", ["coreos", "flatcar"])
def test_killed_etcd_is_named(cluster: NetnsCluster, tmp_path: Path, home: Path, distro: str) -> None:
    cluster.start_all_etcd()
    cluster.kill_etcd(2)
    run = health(cluster, tmp_path, home, "--distro", distro, *ETCD_CHECKS, "--json")
    assert run.returncode == ExitCode.UNHEALTHY
    nodes = run.json()["nodes"]
    assert run.json()["healthy"] is False
    # The node whose etcd is gone cannot answer at all ...
    assert nodes["core-02"]["checks"]["etcd"]["status"] == "fail"
    assert "not answering" in nodes["core-02"]["checks"]["etcd"]["detail"]
    # ... and the others see the cluster degraded and say which member is missing.
    for name in ("core-01", "core-03"):
        etcd = nodes[name]["checks"]["etcd"]
        assert etcd["status"] == "fail"
        assert "2 of 3 healthy" in etcd["detail"] and "172.17.8.102" in etcd["detail"]
        assert nodes[name]["checks"]["members"]["status"] == "pass"  # still 3 members and a leader
    assert "core-02 etcd:" in run.stderr


def test_a_node_gone_leaves_the_cluster_degraded(cluster: NetnsCluster, tmp_path: Path, home: Path) -> None:
    """core-03's sshd and etcd stopped, as when its machine dies: the others still have a leader and a quorum."""
    cluster.start_all_etcd()
    cluster.stop_sshd(3)
    cluster.kill_etcd(3)
    run = health(cluster, tmp_path, home, "--distro", "coreos", "--connect-timeout", "2", *ETCD_CHECKS, "--json")
    assert run.returncode == ExitCode.UNHEALTHY
    report = run.json()
    assert report["etcd_cluster"] == "degraded"
    nodes = report["nodes"]
    assert nodes["core-03"]["etcd_cluster"] is None  # not reached: its view is unknown
    assert "ssh to root@172.17.8.103" in nodes["core-03"]["checks"]["etcd"]["detail"]
    for name in ("core-01", "core-02"):
        assert nodes[name]["etcd_cluster"] == "degraded"
        assert nodes[name]["checks"]["etcd"]["detail"].startswith("cluster is degraded: 2 of 3 healthy")
        assert nodes[name]["checks"]["members"]["status"] == "pass"  # a leader
    assert "etcd says the cluster is degraded: a member is down or cut off" in run.stderr


@pytest.mark.parametrize("distro", ["coreos", "flatcar"])
def test_a_majority_down_leaves_the_cluster_unavailable(
    cluster: NetnsCluster, tmp_path: Path, home: Path, distro: str
) -> None:
    cluster.start_all_etcd()
    cluster.kill_etcd(2, settle=0)
    cluster.kill_etcd(3, settle=0)
    run = health(cluster, tmp_path, home, "--distro", distro, "--check", "etcd", "--json")
    assert run.returncode == ExitCode.UNHEALTHY
    report = run.json()
    assert report["etcd_cluster"] == "unavailable"
    survivor = report["nodes"]["core-01"]
    assert survivor["etcd_cluster"] == "unavailable"
    assert survivor["checks"]["etcd"]["detail"].startswith("cluster is unavailable: 0 of 3 healthy")
    assert "etcd says the cluster is unavailable: no quorum" in run.stderr
    table = health(cluster, tmp_path, home, "--distro", distro, "--check", "etcd")
    assert "fail (unavailable)" in table.stderr and "etcd: cluster unavailable" in table.stderr


def logins(cluster: NetnsCluster) -> list[int]:
    """Per node, the logins its sshd has accepted."""
    return [(node.workdir / "sshd.log").read_text().count("Accepted publickey") for node in cluster.nodes.values()]


def test_wait_until_a_late_member_joins(cluster: NetnsCluster, tmp_path: Path, home: Path) -> None:
    """Several rounds over one SSH connection per node: each node's sshd accepts one login."""
    token = cluster.new_token(3)
    cluster.start_etcd(1, cluster.etcd_env(1, discovery=token))
    cluster.start_etcd(2, cluster.etcd_env(2, discovery=token))  # both wait in discovery for the third
    core_03_calls = cluster.log_calls(3, "etcdctl")  # counts core-03's rounds
    config = cluster.write_ssh_config(tmp_path / "ssh_config")
    logins_before = logins(cluster)
    proc = start_lab(
        "health", "--ssh-config", config, "--distro", "coreos", *ETCD_CHECKS, "--wait", "120", "--json",
        env={"HOME": str(home)},
    )  # fmt: skip

    def rounds_on_core_03() -> int:
        return core_03_calls.read_text().count("cluster-health")

    def two_rounds_ran() -> bool:
        assert proc.poll() is None, "health returned before the third member existed"
        return rounds_on_core_03() >= 2

    try:
        wait_until(two_rounds_ran, "two rounds on core-03 before its etcd starts")
        cluster.start_etcd(3, cluster.etcd_env(3, discovery=token))
        out, err = proc.communicate(timeout=120)
    finally:
        processes.kill(proc)
    assert proc.returncode == ExitCode.OK, err
    assert json.loads(out)["healthy"] is True, out
    # the per-node state while waiting (stderr is not a terminal)
    assert "core-03: etcd: etcd not answering" in err, err
    # No count of rounds after the start: the second round may still be asking core-03 when its etcd comes up,
    # and pass. "healthy" itself can only come from a cluster-health that core-03's new member answered.
    new_logins = [after - before for after, before in zip(logins(cluster), logins_before, strict=True)]
    assert new_logins == [1, 1, 1], err


def test_wait_deadline_exits_5_with_the_failing_checks(cluster: NetnsCluster, tmp_path: Path, home: Path) -> None:
    # A static cluster of three with only two started: it has quorum, but core-03 never answers.
    cluster.start_etcd(1)
    cluster.start_etcd(2)
    cluster.wait_etcd([1, 2])
    run = health(cluster, tmp_path, home, "--distro", "coreos", *ETCD_CHECKS, "--wait", "3", "--json")
    assert run.returncode == ExitCode.TIMEOUT
    report = run.json()
    assert report["healthy"] is False
    assert report["nodes"]["core-03"]["checks"]["etcd"]["status"] == "fail"
    assert "deadline of 3s passed" in run.stderr and "core-03 etcd:" in run.stderr


def test_unreachable_node_fails_alone(cluster: NetnsCluster, tmp_path: Path, home: Path) -> None:
    cluster.start_all_etcd()
    cluster.stop_sshd(3)  # core-03's etcd still serves its peers; only SSH to it is gone
    config = cluster.write_ssh_config(tmp_path / "ssh_config")
    # And a node that does not exist at all: nobody answers ARP for it on the bridge.
    config.write_text(config.read_text() + "Host ghost\n  HostName 172.17.8.199\n  User root\n  IdentitiesOnly yes\n")
    run = lab(
        "health",
        "--ssh-config",
        config,
        "--distro",
        "coreos",
        "--members",
        "3",
        "--connect-timeout",
        "2",
        *ETCD_CHECKS,
        "--json",
        env={"HOME": str(home)},
    )
    assert run.returncode == ExitCode.UNHEALTHY
    nodes = run.json()["nodes"]
    assert nodes["core-01"]["healthy"] and nodes["core-02"]["healthy"]
    for name in ("core-03", "ghost"):
        for check in nodes[name]["checks"].values():
            assert check["status"] == "fail" and "ssh to root@172.17.8." in check["detail"]
    assert "refused" in nodes["core-03"]["checks"]["etcd"]["detail"].lower()


# Stand-ins: systemd and fleet cannot run in a namespace, so these scripts answer in the real tools' formats
# (`systemctl is-active` prints the state and exits 3 when not active; fleetctl as recorded in
# tests/fixtures/fleet). They read their answers from files a test writes. etcd and SSH stay real.
FAKE_SYSTEMCTL = """#!/bin/sh
[ "$1" = is-active ] || exit 1
state=$(cat "$(dirname "$0")/unit-$2" 2>/dev/null || echo inactive)
echo "$state"
[ "$state" = active ]
"""
FAKE_FLEETCTL = """#!/bin/sh
[ "$*" = "list-machines --no-legend --full" ] || exit 1
if [ -f "$(dirname "$0")/fleet-error" ]; then cat "$(dirname "$0")/fleet-error" >&2; exit 1; fi
cat "$(dirname "$0")/fleet-machines"
"""


def test_units_and_fleet_checks_with_stand_in_tools(cluster: NetnsCluster, tmp_path: Path, home: Path) -> None:
    cluster.start_all_etcd()
    machines = "".join(f"{i:032x}\t{cluster.nodes[i].ip}\t-\n" for i in sorted(cluster.nodes))
    for i, node in cluster.nodes.items():
        cluster.install_tool(i, "systemctl", FAKE_SYSTEMCTL)
        cluster.install_tool(i, "fleetctl", FAKE_FLEETCTL)
        (node.bin / "unit-etcd2").write_text("active\n")
        (node.bin / "unit-fleet").write_text("active\n")
        (node.bin / "fleet-machines").write_text(machines)

    run = health(cluster, tmp_path, home, "--distro", "coreos", "--json")  # every check
    assert run.returncode == ExitCode.OK, run.stderr
    node = run.json()["nodes"]["core-01"]["checks"]
    assert node["units"] == {"status": "pass", "detail": "etcd2: active, fleet: active"}
    assert node["fleet"]["status"] == "pass" and "172.17.8.103" in node["fleet"]["detail"]

    bad = cluster.nodes[2].bin
    (bad / "unit-fleet").write_text("failed\n")
    (bad / "fleet-error").write_text(
        "Error retrieving list of active machines: googleapi: Error 503: fleet server unable to communicate with etcd\n"
    )
    (cluster.nodes[3].bin / "fleet-machines").write_text(machines.splitlines(keepends=True)[0])
    run = health(cluster, tmp_path, home, "--distro", "coreos", "--json")
    assert run.returncode == ExitCode.UNHEALTHY
    nodes = run.json()["nodes"]
    assert nodes["core-02"]["checks"]["units"] == {"status": "fail", "detail": "etcd2: active, fleet: failed"}
    assert "Error 503" in nodes["core-02"]["checks"]["fleet"]["detail"]
    assert nodes["core-03"]["checks"]["fleet"]["detail"].startswith("fleet sees 1 of 3 machines")
    assert nodes["core-01"]["healthy"] is True

    run = health(cluster, tmp_path, home, "--distro", "flatcar", "--json")
    flatcar = run.json()["nodes"]["core-01"]["checks"]
    assert flatcar["fleet"] == {"status": "skip", "detail": "fleet does not run on flatcar"}
    assert flatcar["units"] == {"status": "fail", "detail": "etcd-member: inactive"}
    # etcd runs here, but its unit is stopped as systemctl tells it: the etcd checks are not asked (etcdctl
    # would wait out its dial timeout on a real stopped unit); the units check fails the node.
    skipped = {"status": "skip", "detail": "not asked: etcd-member is inactive"}
    assert flatcar["etcd"] == skipped and flatcar["members"] == skipped


def test_flatcar_proxies_named_by_the_configuration_skip_the_v3_probe(tmp_path: Path, home: Path) -> None:
    """A v2 proxy has no v3 API, so probing it waits out etcdctl's dial timeout (2 s). A lab's configuration
    (or --proxy) names its proxies: they are asked in v2 at once, never in v3 (bench/health_scaling.py measures
    what that saves)."""
    with netns_cluster(tmp_path / "nodes", 4) as cluster:
        cluster.start_all_etcd(members=3)
        proxy_calls = cluster.log_calls(4, "etcdctl", ["ETCDCTL_API"])  # which API core-04 is asked in
        config = cluster.write_ssh_config(tmp_path / "ssh_config")
        base = ["health", "--ssh-config", config, "--distro", "flatcar", *ETCD_CHECKS, "--json"]
        env = {"HOME": str(home)}

        probed = lab(*base, "--members", "3", env=env, timeout=120)
        assert probed.returncode == ExitCode.OK, probed.stderr
        assert "(local etcd answers v2 only: a proxy)" in probed.json()["nodes"]["core-04"]["checks"]["etcd"]["detail"]
        probe = proxy_calls.read_text().splitlines()  # a member's v3 questions, at once; they fail; then v2
        assert sorted(call.split()[-3] for call in probe[:3]) == ["health", "list", "status"]
        assert all(call.startswith("ETCDCTL_API=3 ") for call in probe[:3])
        assert probe[3:] == ["ETCDCTL_API=2 cluster-health", "ETCDCTL_API=2 member list"]
        proxy_calls.write_text("")

        named = lab(*base, "--proxy", "core-04", env=env, timeout=120)  # --members follows: 3 hosts are no proxy
        assert named.returncode == ExitCode.OK, named.stderr
        assert proxy_calls.read_text().splitlines() == ["ETCDCTL_API=2 cluster-health", "ETCDCTL_API=2 member list"]
        report = named.json()
        assert report["expected_members"] == 3
        proxy = report["nodes"]["core-04"]["checks"]
        assert proxy["etcd"] == {"status": "pass", "detail": "3 of 3 members healthy (etcd proxy: asked in v2)"}
        assert proxy["members"]["status"] == "pass" and "(core-01, core-02, core-03)" in proxy["members"]["detail"]
        assert report["nodes"]["core-01"]["checks"]["etcd"]["detail"] == "3 of 3 members healthy"


def test_commands_are_not_held_back_by_nagle(cluster: NetnsCluster, tmp_path: Path) -> None:
    """With Nagle on, every command waits for the peer's delayed ACK (~40 ms a round trip, measured 48 ms per
    `true` against 4 ms); the session's socket must have TCP_NODELAY, kept for every command on it (the time per
    command is measured by bench/health_scaling.py)."""
    config = cluster.write_ssh_config(tmp_path / "ssh_config", [1])
    with SSHSession(parse_ssh_config(config.read_text())[0]) as session:
        transport = session._client.get_transport() if session._client else None
        assert transport is not None
        assert transport.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        results = [session.run(["true"]) for _ in range(10)]
        assert all(r.returncode == 0 for r in results)
        assert session._client is not None and session._client.get_transport() is transport  # no reconnect


def test_sessions_to_every_node_load_a_shared_rsa_key_once(
    cluster: NetnsCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Vagrant's insecure key and the keys Vagrant 2.3 inserts are RSA, and loading one costs ~50 ms of CPU: the
    sessions of one run read a shared key once (`cluster.ssh.identity`) and every node accepts it. The key
    loader is wrapped only to count its calls."""
    key = tmp_path / "id_rsa"
    keygen(key, "rsa")
    for node in cluster.nodes.values():
        with (node.workdir / "authorized_keys").open("a") as authorized:
            authorized.write(key.with_suffix(".pub").read_text())
    config = cluster.write_ssh_config(tmp_path / "ssh_config").read_text().replace(str(cluster.user_key), str(key))
    real_load = paramiko.PKey.from_path
    loads: list[str] = []

    def counting_load(path: str, passphrase: bytes | None = None) -> paramiko.PKey:
        loads.append(str(path))
        return real_load(path, passphrase)

    monkeypatch.setattr(paramiko.PKey, "from_path", counting_load)
    targets = parse_ssh_config(config)
    assert len(targets) == len(cluster.nodes) and {t.identity_files for t in targets} == {(str(key),)}

    def who(target: SSHTarget) -> CommandResult:
        with SSHSession(target) as session:
            return session.run(["id", "-un"])

    with ThreadPoolExecutor(len(targets)) as pool:  # as `lab health` connects: all nodes at once
        results = list(pool.map(who, targets))
    assert [r.returncode for r in results] == [0] * len(targets)
    assert loads == [str(key)]


def test_leftovers_of_a_crashed_run_are_removed(tmp_path: Path) -> None:
    fake = 4000000 + os.getpid() % 100000  # above pid_max's default: no live process has this PID
    ns, bridge = f"clab-{fake}-1", f"clab{fake}br"
    try:
        subprocess.run(["ip", "netns", "add", ns], check=True)
        subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], check=True)
        with netns_cluster(tmp_path / "nodes", 1):
            assert ns not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
            assert subprocess.run(["ip", "link", "show", bridge], capture_output=True).returncode != 0
    finally:
        subprocess.run(["ip", "netns", "delete", ns], capture_output=True)
        subprocess.run(["ip", "link", "delete", bridge], capture_output=True)


# Stand-in for an etcd2-era etcdctl (≤ 3.2 cannot run here): same member lines as 3.4's v2 output, but the
# summary says "cluster is healthy" as soon as any member is, and it exits 0.
FAKE_ETCD2_CLUSTER_HEALTH = """#!/bin/sh
[ "$1" = cluster-health ] || exec /usr/bin/etcdctl "$@"
echo "member 25d6ce33763c5524 is unreachable: [http://172.17.8.102:2379] are all unreachable"
echo "member 6ae27f9fa2984b1d is healthy: got healthy result from http://172.17.8.101:2379"
echo "member ff32f4b39b9c47bd is healthy: got healthy result from http://172.17.8.103:2379"
echo "cluster is healthy"
"""


def test_etcd2_healthy_if_any_summary_is_not_trusted(cluster: NetnsCluster, tmp_path: Path, home: Path) -> None:
    cluster.start_all_etcd()
    cluster.install_tool(1, "etcdctl", FAKE_ETCD2_CLUSTER_HEALTH)
    run = health(cluster, tmp_path, home, "--distro", "coreos", "--check", "etcd", "--json")
    assert run.returncode == ExitCode.UNHEALTHY
    etcd = run.json()["nodes"]["core-01"]["checks"]["etcd"]
    assert etcd["status"] == "fail"
    assert etcd["detail"].startswith("etcdctl says healthy but not every member is: 2 of 3 healthy")
    assert "http://172.17.8.102:2379 unreachable" in etcd["detail"]
    assert run.json()["nodes"]["core-02"]["healthy"] is True  # the real etcdctl there
