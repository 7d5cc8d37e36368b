"""`lab health` and `lab smoke --ssh-config` through the CLI, without root: real sshd on loopback, etcd replayed.

Each node is a real OpenSSH sshd on 127.0.0.1 (tests/harness/loopback_sshd.py), reached by lab's real SSH code;
only `etcdctl` is a stand-in, first on each node's PATH: it replays what etcdctl 3.4 answered on a real cluster
(tests/fixtures/etcd-3.4: stdout, stderr and exit code, recorded, never written by hand). Real etcd needs a
network namespace per node, so root: those runs are test_health_netns.py and test_smoke_ssh.py. These cover
what surrounds etcd (SSH, rounds, the deadline, exit codes, output) for a contributor without root.
"""

from __future__ import annotations

import os
import signal
import socket
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import pytest
from harness.cli import LabRun, lab
from harness.loopback_sshd import USER, LoopbackNode, LoopbackNodes, loopback_nodes

from coreos_lab.errors import ExitCode

pytestmark = pytest.mark.integration

RECORDINGS = Path(__file__).parent / "fixtures" / "etcd-3.4"

# Logs each call, then answers it with the recording of the command for the cluster state of the call: line N
# of `etcd-states` for the Nth call, the last line ever after; as recorded on this node (`node`), if it was,
# else on core-01. A command without a recording for that state is refused on stderr (exit 1), never made up.
REPLAY_ETCDCTL = """#!/bin/sh
here=$(dirname "$0")
printf 'ETCDCTL_API=%s %s\\n' "$ETCDCTL_API" "$*" >>"$here/etcdctl.calls"
calls=$(wc -l <"$here/etcdctl.calls")
state=$(sed -n "${calls}p" "$here/etcd-states")
[ -n "$state" ] || state=$(tail -n 1 "$here/etcd-states")
case "$ETCDCTL_API $*" in
    "2 cluster-health") command=v2.cluster-health ;;
    "2 member list") command=v2.member-list ;;
    "3 "*" endpoint health --cluster -w json") command=v3.endpoint-health-cluster-json ;;
    "3 "*" endpoint health -w json") command=v3.endpoint-health-json ;;
    "3 "*" endpoint status -w json") command=v3.endpoint-status-json ;;
    "3 "*" member list -w json") command=v3.member-list-json ;;
    *) command=unknown ;;
esac
recording="RECORDINGS/$state.$command"
node=$(cat "$here/node")  # a question each member answers for itself was recorded on every node
[ -f "RECORDINGS/$state.$node.$command.rc" ] && recording="RECORDINGS/$state.$node.$command"
if [ ! -f "$recording.rc" ]; then
    echo "etcdctl stand-in: no recording of 'etcdctl $*' (ETCDCTL_API=$ETCDCTL_API) for a $state cluster" >&2
    exit 1
fi
cat "$recording.stdout"
cat "$recording.stderr" >&2
exit "$(cat "$recording.rc")"
""".replace("RECORDINGS", str(RECORDINGS))

ETCD_CHECKS = ("--check", "etcd", "--check", "members")


def install_replay(name: str, node: LoopbackNode) -> None:
    node.install_tool("etcdctl", REPLAY_ETCDCTL)
    (node.bin / "node").write_text(name)
    answer(node, "healthy")


def answer(node: LoopbackNode, *states: str) -> None:
    """What `node`'s etcd is, call after call (the last state stays): healthy, degraded (core-02 down)."""
    (node.bin / "etcd-states").write_text("".join(f"{state}\n" for state in states))


def calls(node: LoopbackNode) -> list[str]:
    path = node.bin / "etcdctl.calls"
    return path.read_text().splitlines() if path.exists() else []


def logins(node: LoopbackNode) -> int:
    return node.log.read_text().count("Accepted publickey")


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[LoopbackNodes]:
    """Three nodes whose etcd answers healthy until a test says otherwise."""
    with loopback_nodes(tmp_path / "nodes", 3) as made:
        for name, node in made.nodes.items():
            install_replay(name, node)
        yield made


def health(nodes: LoopbackNodes, tmp_path: Path, home: Path, *args: str, names: list[str] | None = None) -> LabRun:
    config = nodes.write_ssh_config(tmp_path / "ssh_config", names)
    return lab("health", "--ssh-config", config, *args, env={"HOME": str(home)}, timeout=120)


def test_healthy_cluster_as_json_and_as_a_table(nodes: LoopbackNodes, tmp_path: Path, home: Path) -> None:
    run = health(nodes, tmp_path, home, "--distro", "coreos", *ETCD_CHECKS, "--json")
    assert run.returncode == ExitCode.OK, run.stderr
    report = run.json()
    assert report["healthy"] is True and report["expected_members"] == 3
    assert list(report["nodes"]) == ["core-01", "core-02", "core-03"]
    for name, node in report["nodes"].items():
        assert node["address"] == f"{USER}@127.0.0.1:{nodes.nodes[name].port}"
        assert node["checks"]["etcd"] == {"status": "pass", "detail": "3 of 3 members healthy"}
        assert node["checks"]["members"] == {
            "status": "pass",
            "detail": "3 members (core-01, core-02, core-03), leader core-01",
        }
        assert calls(nodes.nodes[name]) == ["ETCDCTL_API=2 cluster-health", "ETCDCTL_API=2 member list"]
    assert "healthy: 3 nodes" in run.stderr
    assert not (home / ".ssh").exists()

    run = health(nodes, tmp_path, home, "--distro", "coreos", *ETCD_CHECKS)
    assert run.returncode == ExitCode.OK, run.stderr
    assert run.stdout == ""  # people get the table on stderr
    rows = [line.split() for line in run.stderr.splitlines() if line.startswith("core-0")]
    assert [row[0] for row in rows] == ["core-01", "core-02", "core-03"]
    assert all(row[2:] == ["pass", "pass"] for row in rows)


def test_members_overrides_the_expected_member_count(nodes: LoopbackNodes, tmp_path: Path, home: Path) -> None:
    run = health(nodes, tmp_path, home, "--distro", "coreos", *ETCD_CHECKS, "--members", "5", "--json")
    assert run.returncode == ExitCode.UNHEALTHY
    report = run.json()
    assert report["expected_members"] == 5
    for node in report["nodes"].values():
        assert node["checks"]["etcd"]["status"] == "pass"
        assert node["checks"]["members"] == {
            "status": "fail",
            "detail": "3 members, expected 5 (core-01, core-02, core-03)",
        }
    assert "core-02 members: 3 members, expected 5" in run.stderr

    # Without --members, as many as the ssh-config has hosts: two here, for a cluster of three members.
    two = ["core-01", "core-02"]
    run = health(nodes, tmp_path, home, "--distro", "coreos", *ETCD_CHECKS, "--json", names=two)
    assert run.returncode == ExitCode.UNHEALTHY
    assert run.json()["nodes"]["core-01"]["checks"]["members"]["detail"].startswith("3 members, expected 2")
    run = health(nodes, tmp_path, home, "--distro", "coreos", *ETCD_CHECKS, "--members", "3", "--json", names=two)
    assert run.returncode == ExitCode.OK, run.stderr
    assert run.json()["expected_members"] == 3


def test_wait_until_healthy_over_one_connection_per_node(nodes: LoopbackNodes, tmp_path: Path, home: Path) -> None:
    """core-02 sees the cluster degraded for two rounds, then healthy: the third round ends the wait."""
    answer(nodes.nodes["core-02"], "degraded", "degraded", "healthy")
    run = health(nodes, tmp_path, home, "--distro", "coreos", "--check", "etcd", "--wait", "60", "--json")
    assert run.returncode == ExitCode.OK, run.stderr
    assert run.json()["healthy"] is True
    for node in nodes.nodes.values():
        assert calls(node) == ["ETCDCTL_API=2 cluster-health"] * 3  # every node in every round, and no more
        assert logins(node) == 1  # the rounds share one SSH connection per node
    # Off a terminal, a line whenever a node's state changes.
    degraded = "core-02: etcd: cluster is degraded: 2 of 3 healthy; not healthy: http://172.17.8.102:2379"
    lines = run.stderr.splitlines()
    first_degraded = next(i for i, line in enumerate(lines) if line.startswith(degraded))
    assert "core-02: healthy" in lines[first_degraded + 1 :]
    assert sum(line.startswith("core-02: ") for line in lines) == 2  # the second degraded round changed nothing


def test_wait_that_runs_out_exits_5_with_the_last_full_round(nodes: LoopbackNodes, tmp_path: Path, home: Path) -> None:
    answer(nodes.nodes["core-02"], "degraded")
    run = health(nodes, tmp_path, home, "--distro", "coreos", "--check", "etcd", "--wait", "8", "--json")
    assert run.returncode == ExitCode.TIMEOUT, run.stderr
    report = run.json()
    assert report["healthy"] is False
    etcd = {name: node["checks"]["etcd"] for name, node in report["nodes"].items()}
    assert etcd["core-02"]["status"] == "fail"
    assert etcd["core-02"]["detail"].startswith("cluster is degraded: 2 of 3 healthy; not healthy: http://172.17.8.102")
    # A full round: the other nodes' checks ran to their answer, not into timeouts cut short by the deadline.
    assert etcd["core-01"] == etcd["core-03"] == {"status": "pass", "detail": "3 of 3 members healthy"}
    rounds = {len(calls(node)) for node in nodes.nodes.values()}
    assert len(rounds) == 1 and rounds.pop() >= 1  # every round asked every node
    assert "deadline of 8s passed before the cluster was healthy" in run.stderr
    assert "core-02 etcd: cluster is degraded" in run.stderr


def test_named_proxy_is_asked_in_v2_only(tmp_path: Path, home: Path) -> None:
    """Flatcar: the members answer the v3 API; a host named with --proxy runs etcd as a v2 proxy and is asked in
    v2 at once (a v3 probe would wait out its dial timeout), and the expected member count leaves it out."""
    with loopback_nodes(tmp_path / "nodes", 4) as nodes:
        for name, node in nodes.nodes.items():
            install_replay(name, node)  # a v2 proxy forwards v2 requests: the members' answers
        run = health(nodes, tmp_path, home, "--distro", "flatcar", *ETCD_CHECKS, "--proxy", "core-04", "--json")
        assert run.returncode == ExitCode.OK, run.stderr
        report = run.json()
        assert report["expected_members"] == 3
        proxy = report["nodes"]["core-04"]["checks"]
        assert proxy["etcd"] == {"status": "pass", "detail": "3 of 3 members healthy (etcd proxy: asked in v2)"}
        assert proxy["members"]["detail"] == "3 members (core-01, core-02, core-03), leader core-01"
        assert calls(nodes.nodes["core-04"]) == ["ETCDCTL_API=2 cluster-health", "ETCDCTL_API=2 member list"]
        member = report["nodes"]["core-01"]["checks"]
        assert member["etcd"] == {"status": "pass", "detail": "3 of 3 members healthy"}
        assert member["members"]["detail"] == "3 members (core-01, core-02, core-03), leader core-01"
        asked = calls(nodes.nodes["core-01"])  # each member answers for itself (no --cluster), its questions at once
        assert sorted(call.split()[-4:] for call in asked) == [
            ["endpoint", "health", "-w", "json"],
            ["endpoint", "status", "-w", "json"],
            ["member", "list", "-w", "json"],
        ]
        assert all(call.startswith("ETCDCTL_API=3 ") for call in asked)


def test_connect_timeout_and_unreachable_nodes(nodes: LoopbackNodes, tmp_path: Path, home: Path) -> None:
    """Beside a real node: a listener that accepts but never speaks SSH, and a closed port. Each fails alone,
    with its own cause; the real node stays healthy."""
    with socket.socket() as mute, socket.socket() as closed:
        mute.bind(("127.0.0.1", 0))
        mute.listen(8)  # connections complete in the backlog; nobody ever answers them
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connect is refused
        config = nodes.write_ssh_config(tmp_path / "ssh_config", ["core-01"])
        for name, sock in (("mute", mute), ("closed", closed)):
            port = sock.getsockname()[1]
            config.write_text(config.read_text() + f"Host {name}\n  HostName 127.0.0.1\n  Port {port}\n")
        run = lab(
            "health", "--ssh-config", config, "--distro", "coreos", "--check", "etcd", "--members", "3",
            "--connect-timeout", "3", "--json", env={"HOME": str(home)}, timeout=120,
        )  # fmt: skip
    assert run.returncode == ExitCode.UNHEALTHY
    report = run.json()["nodes"]
    assert report["core-01"]["healthy"] is True
    mute_port, closed_port = (report[name]["address"].rsplit(":", 1)[1] for name in ("mute", "closed"))
    mute_detail = report["mute"]["checks"]["etcd"]["detail"]
    assert mute_detail.startswith(f"mute: ssh to 127.0.0.1:{mute_port} failed: Error reading SSH protocol banner")
    closed_detail = report["closed"]["checks"]["etcd"]["detail"]
    assert closed_detail == f"closed: ssh to 127.0.0.1:{closed_port} failed: connection refused"
    assert "mute etcd: mute: ssh to" in run.stderr and "closed etcd: closed: ssh to" in run.stderr


# In front of the replay on the first node: a write (`etcdctl set`, the smoke round trip's first step) is
# taken and never answered, as by a node too busy to answer. It keeps its PID for the test to end it.
HANGING_WRITES = """#!/bin/sh
here=$(dirname "$0")
case "$1" in set|put) echo $$ >"$here/hung.pid"; exec sleep 600 ;; esac
exec "$here/etcdctl-replay" "$@"
"""


def test_smoke_whose_round_trip_never_answers_exits_5(nodes: LoopbackNodes, tmp_path: Path, home: Path) -> None:
    first = nodes.nodes["core-01"]
    first.install_tool("etcdctl-replay", REPLAY_ETCDCTL)
    first.install_tool("etcdctl", HANGING_WRITES)
    config = nodes.write_ssh_config(tmp_path / "ssh_config")
    junit = tmp_path / "smoke.xml"
    try:
        run = lab(
            "smoke", "--ssh-config", config, "--distro", "coreos", "--check", "etcd", "--timeout", "5",
            "--junit", junit, "--json", env={"HOME": str(home)}, timeout=120,
        )  # fmt: skip
    finally:
        hung = first.bin / "hung.pid"
        if hung.exists():
            with suppress(ProcessLookupError):
                os.kill(int(hung.read_text()), signal.SIGKILL)
    assert run.returncode == ExitCode.TIMEOUT, run.stderr
    result = run.json()
    assert result["passed"] is False and result["exit_code"] == ExitCode.TIMEOUT
    assert result["message"].startswith("etcd round trip: core-01: etcdctl did not finish within 5s")
    outcomes = {case["name"]: case["outcome"] for case in result["cases"]}
    assert outcomes == {
        "health core-01": "passed",
        "health core-02": "passed",
        "health core-03": "passed",
        "etcd round trip": "failed",
    }
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == "1"
    assert hung.exists()  # the write was sent, and was what timed out


def test_several_commands_in_one_exec_keep_their_own_outputs(nodes: LoopbackNodes, tmp_path: Path) -> None:
    """`SSHSession.run_each`: one exec, and each command's stdout, stderr and exit code as if run alone, whatever
    they print (no trailing newline, lines that look like markers), one after the other or all at once."""
    from coreos_lab.cluster.ssh import SSHSession, parse_ssh_config

    (target,) = parse_ssh_config(nodes.write_ssh_config(tmp_path / "ssh_config", ["core-01"]).read_text())
    order = tmp_path / "order"
    commands = [
        (["sh", "-c", f"printf 'no newline'; echo first >>{order}"], None),
        (["sh", "-c", f'echo "$GREETING"; echo oops >&2; echo; echo second >>{order}; exit 3'], {"GREETING": "a b\n0"}),
        (["sh", "-c", "printf '\\n1 0\\n'; printf '\\n\\n' >&2"], None),
    ]
    expected = [(0, "no newline", ""), (3, "a b\n0\n\n", "oops\n"), (0, "\n1 0\n", "\n\n")]
    with SSHSession(target) as session:
        before = logins(nodes.nodes["core-01"])
        results = session.run_each(commands)
        assert [(r.returncode, r.stdout, r.stderr) for r in results] == expected
        assert [r.argv for r in results] == [argv for argv, _ in commands]
        assert order.read_text() == "first\nsecond\n"
        # At once: the first waits until the second has run, which only works if they run side by side.
        order.unlink()
        waits = f"while [ ! -s {order} ]; do sleep 0.05; done; printf 'no newline'"
        where = (["sh", "-c", "readlink /proc/$$/fd/1"], None)  # the file its output goes to
        at_once = session.run_each([(["sh", "-c", waits], None), *commands[1:], where], at_once=True)
        assert [(r.returncode, r.stdout, r.stderr) for r in at_once[:3]] == expected
        assert logins(nodes.nodes["core-01"]) == before  # the same connection throughout
    output_file = Path(at_once[3].stdout.strip())
    assert output_file.name == "3.out" and not output_file.parent.exists()  # the outputs' directory is removed
