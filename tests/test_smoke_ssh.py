"""`lab smoke --ssh-config` against real nodes: sshd + etcd 3.4 in network namespaces.

The namespaces have no systemd and no fleet, so these runs select the etcd checks; the fleet unit stage
is then not part of the run (test_units_fleet_cli.py runs it against stand-ins replaying fleet's outputs).
"""

from __future__ import annotations

import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from harness.cli import lab
from harness.netns import NetnsCluster

from coreos_lab.errors import ExitCode

pytestmark = [pytest.mark.integration, pytest.mark.etcd, pytest.mark.netns]

ETCD_CHECKS = ("--check", "etcd", "--check", "members")


def _cases(junit: Path) -> dict[str, ET.Element]:
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None
    return {case.get("name", ""): case for case in suite.iter("testcase")}


@pytest.mark.parametrize("distro", ["coreos", "flatcar"])
def test_healthy_cluster_passes_with_junit(cluster: NetnsCluster, tmp_path: Path, distro: str) -> None:
    cluster.start_all_etcd()
    config = cluster.write_ssh_config(tmp_path / "ssh_config")
    junit = tmp_path / "smoke.xml"
    run = lab(
        "smoke", "--ssh-config", config, "--distro", distro, *ETCD_CHECKS,
        "--timeout", "60", "--junit", junit, "--json", env={"HOME": str(tmp_path)}, timeout=180,
    )  # fmt: skip
    assert run.returncode == ExitCode.OK, run.stderr
    assert run.json()["passed"] is True
    cases = _cases(junit)
    assert sorted(cases) == ["etcd round trip", "health core-01", "health core-02", "health core-03"]
    for case in cases.values():
        assert case.find("failure") is None and case.find("error") is None and case.find("skipped") is None
        assert float(case.get("time", "-1")) >= 0
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None and suite.get("tests") == "4" and suite.get("failures") == "0"
    # The round trip cleaned up after itself: no smoke keys are left in etcd.
    left = [*cluster.nodes[1].prefix, "etcdctl", "get", "--prefix", "--keys-only", "/coreos-lab/smoke"]
    out = subprocess.run(left, capture_output=True, text=True, env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0 and out.stdout.strip() == ""


def test_killed_member_fails_its_case_and_exits_3(cluster: NetnsCluster, tmp_path: Path) -> None:
    cluster.start_all_etcd()
    cluster.kill_etcd(3)
    config = cluster.write_ssh_config(tmp_path / "ssh_config")
    junit = tmp_path / "smoke.xml"
    run = lab(
        "smoke", "--ssh-config", config, "--distro", "flatcar", *ETCD_CHECKS,
        "--timeout", "3", "--junit", junit, env={"HOME": str(tmp_path)}, timeout=180,
    )  # fmt: skip
    assert run.returncode == ExitCode.UNHEALTHY, run.stderr
    cases = _cases(junit)
    failure = cases["health core-03"].find("failure")
    assert failure is not None and "etcd" in failure.get("message", "")
    # The functional stage is recorded as skipped, not silently dropped.
    assert cases["etcd round trip"].find("skipped") is not None
    assert "core-03" in run.stderr
