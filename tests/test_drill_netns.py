"""`lab drill` through the SSH path, against real nodes: sshd and etcd 3.4 in network namespaces
(tests/harness/netns.py), given to `lab` as an OpenSSH config.

systemd cannot run in a namespace: each node's `systemctl` is a stand-in that stops and starts that node's real etcd
(tests/harness/etcd_unit.py). Partitions are real packet filtering: iptables in the node's namespace, over SSH.
"""

from __future__ import annotations

import json
import signal
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from harness import etcd_unit, processes
from harness.cli import LabRun, lab, start_lab
from harness.netns import NetnsCluster
from harness.waiting import wait_until

from coreos_lab.errors import ExitCode

pytestmark = [pytest.mark.integration, pytest.mark.etcd, pytest.mark.netns]


class Drills:
    """`lab drill|health … --ssh-config FILE --distro D` on the cluster."""

    def __init__(self, cluster: NetnsCluster, tmp_path: Path, distro: str = "coreos"):
        self.cluster = cluster
        self.config = cluster.write_ssh_config(tmp_path / "ssh_config")
        self.distro = distro
        self.env = {"HOME": str(tmp_path)}

    @property
    def where(self) -> tuple[str | Path, ...]:
        return ("--ssh-config", self.config, "--distro", self.distro)

    def __call__(self, drill: str, *args: str | Path, timeout: float = 300) -> LabRun:
        return lab("drill", drill, *self.where, *args, env=self.env, timeout=timeout)

    def health(self, *args: str) -> LabRun:
        return lab("health", *self.where, "--check", "etcd", *args, "--json", env=self.env, timeout=300)

    def chains(self, i: int) -> str:
        """The node's iptables rules."""
        argv = [*self.cluster.nodes[i].prefix, "iptables", "-w", "-S"]
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


@pytest.fixture
def drills(cluster: NetnsCluster, tmp_path: Path) -> Drills:
    cluster.start_all_etcd()
    etcd_unit.install_all(cluster)
    return Drills(cluster, tmp_path)


def test_kill_etcd_then_start(drills: Drills) -> None:
    killed = drills("kill-etcd", "core-03", "--json")
    assert killed.returncode == ExitCode.OK, killed.stderr
    assert killed.json() == {
        "drill": "kill-etcd",
        "nodes": ["core-03"],
        "actions": ["core-03: etcd2 stopped (systemctl stop)"],
    }
    report = drills.health().json()
    assert report["etcd_cluster"] == "degraded"
    assert report["nodes"]["core-01"]["checks"]["etcd"]["detail"].startswith("cluster is degraded: 2 of 3 healthy")

    started = drills("start", "core-03")
    assert started.returncode == ExitCode.OK, started.stderr
    assert "core-03: etcd2 started (systemctl start)" in started.stderr
    healthy = drills.health("--wait", "120")
    assert healthy.returncode == ExitCode.OK, healthy.stderr
    assert healthy.json()["etcd_cluster"] == "healthy"


@pytest.mark.parametrize("distro", ["coreos", "flatcar"])
def test_partition_and_heal_by_packet_filtering(drills: Drills, distro: str) -> None:
    """coreos: every node probes the cluster itself (v2 `cluster-health`); flatcar: each member answers for itself
    and the cluster's health is combined: the cut-off member's own answer (no quorum) makes its view unavailable."""
    drills.distro = distro
    cut = drills("partition", "core-03", "--json")
    assert cut.returncode == ExitCode.OK, cut.stderr
    assert cut.json()["actions"] == [
        "core-03: packets to and from 172.17.8.101, 172.17.8.102 dropped (iptables chain LAB-DRILL)"
    ]
    assert "-A INPUT -j LAB-DRILL" in drills.chains(3)

    # If core-03 led, the other two first elect a new leader; until then they see each other as unhealthy too.
    # Wait for that election (the event), then look at the settled report.
    reports: list[LabRun] = []

    def survivors_settled() -> bool:
        reports.append(drills.health())
        nodes = reports[-1].json()["nodes"]
        details = [nodes[name]["checks"]["etcd"]["detail"] for name in ("core-01", "core-02")]
        return all(detail.startswith("cluster is degraded: 2 of 3 healthy") for detail in details)

    wait_until(survivors_settled, lambda: reports[-1].stdout, timeout=120, interval=0.5)
    report = reports[-1]
    assert report.returncode == ExitCode.UNHEALTHY
    nodes = report.json()["nodes"]
    # core-03 is still reached over SSH, and its own etcd now finds no quorum; the other two carry on without it.
    assert nodes["core-03"]["etcd_cluster"] == "unavailable"
    assert nodes["core-03"]["checks"]["etcd"]["detail"].startswith("cluster is unavailable")
    for name in ("core-01", "core-02"):
        assert nodes[name]["etcd_cluster"] == "degraded"
        detail = nodes[name]["checks"]["etcd"]["detail"]
        assert detail.startswith("cluster is degraded: 2 of 3 healthy") and "172.17.8.103" in detail
    assert report.json()["etcd_cluster"] == "degraded"

    healed = drills("heal")  # every node: harmless where nothing was cut
    assert healed.returncode == ExitCode.OK, healed.stderr
    assert "core-03: iptables chain LAB-DRILL removed" in healed.stderr
    assert all("LAB-DRILL" not in drills.chains(i) for i in drills.cluster.nodes)
    healthy = drills.health("--wait", "120")
    assert healthy.returncode == ExitCode.OK, healthy.stderr


def test_bad_input_is_refused_and_leaves_nothing_behind(drills: Drills) -> None:
    unknown = drills("partition", "core-09")
    assert unknown.returncode == ExitCode.USAGE
    assert "no node 'core-09' among the ssh-config's hosts" in unknown.stderr
    assert "core-01, core-02, core-03" in unknown.stderr

    everyone = drills("partition", "core-01", "core-02", "core-03", "--json")
    assert everyone.returncode == ExitCode.USAGE
    assert "partition of every node" in everyone.json()["error"]["message"]

    no_provider = drills("stop", "core-02")
    assert no_provider.returncode == ExitCode.USAGE and "needs a lab" in no_provider.stderr

    two = drills("kill-etcd", "core-01", "core-02")
    assert two.returncode == ExitCode.USAGE and "name one node" in two.stderr

    assert all("LAB-DRILL" not in drills.chains(i) for i in drills.cluster.nodes)
    assert drills.health().json()["etcd_cluster"] == "healthy"  # no etcd was stopped either


@pytest.mark.parametrize("distro", ["coreos", "flatcar"])
def test_quorum_drill_passes(drills: Drills, tmp_path: Path, distro: str) -> None:
    drills.distro = distro
    junit = tmp_path / "quorum.xml"
    run = drills("quorum", "--junit", junit, "--json", timeout=900)
    assert run.returncode == ExitCode.OK, run.stderr
    result = run.json()
    assert result["passed"] is True and result["members"] == ["core-01", "core-02", "core-03"]
    outcomes = {step["name"]: step["outcome"] for step in result["steps"]}
    assert outcomes == {
        "cluster healthy": "passed",
        "core-03 down: cluster degraded": "passed",
        "write through core-01 while degraded": "passed",
        "core-02, core-03 down: cluster unavailable": "passed",
        "write through core-01 without quorum": "passed",
        "restored: cluster healthy": "passed",
        "first write readable on core-03": "passed",
    }
    steps = {step["name"]: step for step in result["steps"]}
    assert steps["write through core-01 without quorum"]["observed"].startswith(("refused", "timed out"))
    assert "expected: degraded" in run.stderr and "observed: degraded" in run.stderr
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None and suite.get("tests") == "7" and suite.get("failures") == "0"
    assert drills.health().json()["etcd_cluster"] == "healthy"  # every member runs again


def test_quorum_drill_fails_when_the_majority_is_not_really_down(drills: Drills, tmp_path: Path) -> None:
    """Sabotage: core-02's etcd unit ignores `stop`, so the "majority down" step leaves a quorum standing. The drill
    must see etcd still degraded and the write accepted, and fail."""
    etcd_unit.install(drills.cluster, 2, ignore_stop=True)
    junit = tmp_path / "quorum.xml"
    run = drills("quorum", "--timeout", "15", "--junit", junit, "--json", timeout=900)
    assert run.returncode == ExitCode.UNHEALTHY, run.stderr
    steps = {step["name"]: step for step in run.json()["steps"]}
    majority = steps["core-02, core-03 down: cluster unavailable"]
    assert majority["outcome"] == "failed" and majority["observed"].startswith("degraded")
    refused = steps["write through core-01 without quorum"]
    assert refused["outcome"] == "failed" and refused["observed"].startswith("accepted")
    assert steps["restored: cluster healthy"]["outcome"] == "passed"
    assert "etcd did not behave as it promises" in run.stderr
    failures = {c.get("name") for c in ET.parse(junit).getroot().iter("testcase") if c.find("failure") is not None}
    assert failures == {"core-02, core-03 down: cluster unavailable", "write through core-01 without quorum"}


def test_interrupted_quorum_drill_undoes_its_faults(drills: Drills, tmp_path: Path) -> None:
    """Ctrl-C while a member is down: its etcd is started again, the report says where the drill stopped, exit 130."""
    junit = tmp_path / "quorum.xml"
    process = start_lab("drill", "quorum", *drills.where, "--junit", junit, "--json", env=drills.env)
    try:
        original = drills.cluster.nodes[3].etcd
        assert original is not None

        def core_03_down() -> bool:
            assert process.poll() is None, process.communicate()
            return original.poll() is not None

        wait_until(core_03_down, "the drill stopping core-03's etcd", timeout=300)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=300)
    finally:
        processes.kill(process)
    assert process.returncode == ExitCode.INTERRUPTED, err
    result = json.loads(out)
    assert result["undone"][0] == "core-03: etcd2 started"
    assert [s["outcome"] for s in result["steps"]][:2] == ["passed", "error"]
    assert result["steps"][1]["observed"] == "interrupted"
    assert ET.parse(junit).getroot().find(".//testcase/error") is not None
    assert drills.health("--wait", "120").json()["etcd_cluster"] == "healthy"
