"""`lab smoke` with a lab: the whole path up → health → functional → destroy.

- On this machine with the real Vagrant and no VirtualBox: preflight fails, exit 4, the JUnit file records it,
  nothing is left behind.
- Past preflight a working provider is needed, which cannot run here: those tests use the stand-in `vagrant`
  (tests/harness/standin_vagrant.py) whose `ssh-config` points at real nodes — sshd + etcd 3.4 in network
  namespaces — so health and the etcd round trip are real; only machine creation is simulated.
"""

from __future__ import annotations

import json
import signal
import socket
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml
from harness import processes
from harness.boxes import add_box
from harness.cli import lab, start_lab
from harness.lifecycle_labs import install_standins, make_lab
from harness.netns import NetnsCluster, netns_cluster
from harness.tool_path import VIRTUALBOX_TOOLS, path_without
from harness.waiting import wait_until

from coreos_lab.errors import ExitCode
from coreos_lab.mirror.store import MirrorStore

NODES = ["core-01", "core-02", "core-03"]
ETCD_CHECKS = ("--check", "etcd", "--check", "members")


def cases(junit: Path) -> dict[str, str]:
    """{case name: outcome} from a JUnit file."""
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None
    found = {}
    for case in suite.iter("testcase"):
        outcome = next((tag for tag in ("failure", "error", "skipped") if case.find(tag) is not None), "passed")
        found[case.get("name", "")] = outcome
    return found


def verbs(base: Path) -> list[str]:
    path = base / "calls.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line)["argv"][0] for line in lines]


@pytest.mark.integration
@pytest.mark.vagrant
def test_throwaway_smoke_without_virtualbox_fails_preflight_and_leaves_nothing(tmp_path: Path) -> None:
    root = tmp_path / "boxes"
    add_box(MirrorStore(root), "coreos-stable", "1068.8.0")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    junit = tmp_path / "report" / "smoke.xml"
    env = {"LAB_MIRROR_ROOT": str(root), "TMPDIR": str(scratch), "VAGRANT_HOME": str(tmp_path / "vagrant.d")}
    env["PATH"] = path_without(tmp_path / "bin", *VIRTUALBOX_TOOLS)  # holds on a machine that has VirtualBox
    run = lab("smoke", "--nodes", "1", "--junit", junit, env=env, cwd=tmp_path, timeout=180)
    assert run.returncode == ExitCode.MISSING_TOOL, run.stderr
    assert "VirtualBox" in run.stderr
    assert cases(junit) == {
        "init": "passed",
        "preflight": "failure",
        "up": "skipped",
        "health": "skipped",
        "etcd round trip": "skipped",
        "fleet unit": "skipped",
    }
    failure = ET.parse(junit).getroot().find(".//testcase[@name='preflight']/failure")
    assert failure is not None and "VirtualBox" in failure.get("message", "")
    assert list(scratch.iterdir()) == []  # the throw-away lab is gone
    assert not (root / ".discovery").exists() or _no_tokens(root)  # no token was consumed


def _no_tokens(root: Path) -> bool:
    from coreos_lab.discovery.store import DiscoveryStore

    store = DiscoveryStore(root / ".discovery")
    try:
        return store.tokens() == []
    finally:
        store.close()


@pytest.mark.integration
@pytest.mark.etcd
@pytest.mark.netns
def test_full_smoke_passes_and_tears_down(tmp_path: Path, cluster: NetnsCluster) -> None:
    cluster.start_all_etcd()
    lab_dir, env = make_lab(tmp_path)
    env.update(install_standins(tmp_path, NODES))
    env["STANDIN_SSH_CONFIG"] = str(cluster.write_ssh_config(tmp_path / "ssh_config"))
    env["HOME"] = str(tmp_path)
    junit = tmp_path / "smoke.xml"
    run = lab("smoke", lab_dir, *ETCD_CHECKS, "--timeout", "120", "--junit", junit, "--json", env=env, timeout=240)
    assert run.returncode == ExitCode.OK, run.stderr
    assert run.json()["passed"] is True
    assert cases(junit) == dict.fromkeys(
        ["preflight", "up", "health core-01", "health core-02", "health core-03", "etcd round trip", "destroy"],
        "passed",
    )
    assert verbs(tmp_path)[-1] == "destroy"
    assert not any((lab_dir / ".vagrant" / "machines").glob("*/*/id"))
    state = json.loads((lab_dir / ".lab" / "state.json").read_text())
    assert state["token"] is None and len(state["used_tokens"]) == 1  # the cluster's token is spent for good


@pytest.mark.integration
@pytest.mark.etcd
@pytest.mark.netns
def test_flatcar_round_trip_reads_on_the_last_member_not_a_proxy(tmp_path: Path) -> None:
    """Flatcar proxies speak only etcd's v2 API: the v3 round trip must end on the last *member*."""
    names = [*NODES, "core-04"]
    with netns_cluster(tmp_path / "nodes", 4) as cluster:
        cluster.start_all_etcd(members=3)
        lab_dir, env = make_lab(tmp_path, nodes=4, distro="flatcar")
        doc = yaml.safe_load((lab_dir / "lab.yaml").read_text())
        doc["etcd"] = {"members": 3}
        (lab_dir / "lab.yaml").write_text(yaml.safe_dump(doc))
        env.update(install_standins(tmp_path, names))
        env["STANDIN_SSH_CONFIG"] = str(cluster.write_ssh_config(tmp_path / "ssh_config"))
        env["HOME"] = str(tmp_path)
        run = lab("smoke", lab_dir, *ETCD_CHECKS, "--timeout", "120", "--json", env=env, timeout=240)
    assert run.returncode == ExitCode.OK, run.stderr
    trip = next(c for c in run.json()["cases"] if c["name"] == "etcd round trip")
    assert "written on core-01, read back on core-03" in trip["message"]


@pytest.mark.integration
@pytest.mark.etcd
@pytest.mark.netns
def test_failed_smoke_keeps_the_lab_when_asked(tmp_path: Path, cluster: NetnsCluster) -> None:
    cluster.start_all_etcd()
    cluster.kill_etcd(2)
    lab_dir, env = make_lab(tmp_path)
    env.update(install_standins(tmp_path, NODES))
    env["STANDIN_SSH_CONFIG"] = str(cluster.write_ssh_config(tmp_path / "ssh_config"))
    env["HOME"] = str(tmp_path)
    junit = tmp_path / "smoke.xml"
    # core-02 never gets healthy, so health waits out whatever the budget leaves after preflight and up: enough
    # for those two on a loaded machine (5 s was not), not so much that the test idles for minutes.
    run = lab(
        "smoke", lab_dir, *ETCD_CHECKS, "--timeout", "30", "--junit", junit, "--keep-on-failure",
        env=env, timeout=240,
    )  # fmt: skip
    assert run.returncode == ExitCode.UNHEALTHY, run.stderr
    outcome = cases(junit)
    assert outcome["health core-02"] == "failure" and "destroy" not in outcome
    assert "destroy" not in verbs(tmp_path)
    assert f"lab ssh {lab_dir}" in run.stderr and f"lab destroy {lab_dir} --force" in run.stderr
    assert len(list((lab_dir / ".vagrant" / "machines").glob("*/*/id"))) == 3


@pytest.mark.integration
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupted_smoke_still_tears_down_and_reports(tmp_path: Path, signum: signal.Signals) -> None:
    """Ctrl-C, or SIGTERM (how CI cancels a job), while health is being waited for: destroy runs, the token is
    retired, the report records the interruption, exit 130.

    The nodes are a listening socket that takes connections and hangs up: health checks reach them, never pass.
    """
    lab_dir, env = make_lab(tmp_path)
    env.update(install_standins(tmp_path, NODES))
    junit = tmp_path / "smoke.xml"
    with socket.create_server(("127.0.0.1", 0)) as nodes:
        port = nodes.getsockname()[1]
        config = tmp_path / "ssh_config"
        config.write_text("".join(f"Host {n}\n  HostName 127.0.0.1\n  Port {port}\n  User core\n\n" for n in NODES))
        env["STANDIN_SSH_CONFIG"] = str(config)
        process = start_lab("smoke", lab_dir, *ETCD_CHECKS, "--junit", junit, env=env)
        try:
            nodes.settimeout(0.1)

            def health_connected() -> bool:
                assert process.poll() is None, process.communicate()[1]  # lab ended before its health stage
                try:
                    nodes.accept()[0].close()
                except TimeoutError:
                    return False
                return True

            wait_until(health_connected, "a health check connecting to a node (the machines are up)")
            process.send_signal(signum)
            _, stderr = process.communicate(timeout=120)
        finally:
            processes.kill(process)
    assert process.returncode == ExitCode.INTERRUPTED, stderr
    assert verbs(tmp_path)[-1] == "destroy"
    assert not any((lab_dir / ".vagrant" / "machines").glob("*/*/id"))
    state = json.loads((lab_dir / ".lab" / "state.json").read_text())
    assert state["token"] is None and len(state["used_tokens"]) == 1  # retired: never rendered again
    assert cases(junit) == {"preflight": "passed", "up": "passed", "health": "error", "destroy": "passed"}
    interrupted = ET.parse(junit).getroot().find(".//testcase[@name='health']/error")
    assert interrupted is not None and interrupted.get("message") == "interrupted"
