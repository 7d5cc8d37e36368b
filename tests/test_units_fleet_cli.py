"""The `units` and `fleet` health checks and smoke's `fleet unit` stage, through the CLI, against real nodes.

The nodes are real (sshd in network namespaces, tests/harness/netns.py; etcd 3.4 for the smoke runs), but systemd
and fleet cannot run in a namespace: `systemctl` and `fleetctl` there are stand-ins (tests/harness/standin_coreos.py)
that replay outputs recorded from the real tools — systemd 252's `is-active` answers and fleet's own samples and
error messages (tests/fixtures/README.md) — the fleet one keeping the cluster's units in a registry file as fleet
keeps them in etcd.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from harness.cli import LabRun, lab
from harness.netns import NetnsCluster
from harness.standin_coreos import install, read_registry, registry_path, write_registry

from coreos_lab.errors import ExitCode

pytestmark = [pytest.mark.integration, pytest.mark.netns]

UNITS_AND_FLEET = ("--check", "units", "--check", "fleet")
EVERY_MACHINE = "3 machines (172.17.8.103, 172.17.8.102, 172.17.8.101)"  # fleet's sample, in its order


def health(cluster: NetnsCluster, tmp_path: Path) -> LabRun:
    config = cluster.write_ssh_config(tmp_path / "ssh_config")
    return lab(
        "health", "--ssh-config", config, "--distro", "coreos", *UNITS_AND_FLEET, "--json",
        env={"HOME": str(tmp_path)}, timeout=120,
    )  # fmt: skip


def checks(run: LabRun) -> dict[str, dict[str, Any]]:
    return {name: node["checks"] for name, node in run.json()["nodes"].items()}


def test_healthy_units_and_fleet_pass(cluster: NetnsCluster, tmp_path: Path) -> None:
    for i in cluster.nodes:
        install(cluster, i)
    run = health(cluster, tmp_path)
    assert run.returncode == ExitCode.OK, run.stderr
    for node in checks(run).values():
        assert node["units"] == {"status": "pass", "detail": "etcd2: active, fleet: active"}
        assert node["fleet"] == {"status": "pass", "detail": EVERY_MACHINE}


def test_a_failed_inactive_or_starting_unit_fails_its_node(cluster: NetnsCluster, tmp_path: Path) -> None:
    install(cluster, 1, units={"etcd2": "failed", "fleet": "active"})
    install(cluster, 2, units={"etcd2": "active", "fleet": "inactive"})
    install(cluster, 3, units={"etcd2": "activating", "fleet": "active"})
    run = health(cluster, tmp_path)
    assert run.returncode == ExitCode.UNHEALTHY
    nodes = checks(run)
    assert nodes["core-01"]["units"] == {"status": "fail", "detail": "etcd2: failed, fleet: active"}
    assert nodes["core-02"]["units"] == {"status": "fail", "detail": "etcd2: active, fleet: inactive"}
    assert nodes["core-03"]["units"] == {"status": "fail", "detail": "etcd2: activating, fleet: active"}
    assert all(node["fleet"]["status"] == "pass" for node in nodes.values())
    assert "core-01 units: etcd2: failed" in run.stderr


def test_fleet_without_etcd_fails_every_node_and_says_why(cluster: NetnsCluster, tmp_path: Path) -> None:
    """fleet's API answers 503 when etcd has lost quorum; fleet 1.0 adds generic "Possible issues" lines."""
    install(cluster, 1, list_machines="list-machines.fleet-1.0.etcd-503")
    install(cluster, 2, list_machines="list-machines.fleet-1.0.etcd-503")
    install(cluster, 3, list_machines="list-machines.fleet-0.x.etcd-503")
    run = health(cluster, tmp_path)
    assert run.returncode == ExitCode.UNHEALTHY
    nodes = checks(run)
    for name in ("core-01", "core-02"):
        assert nodes[name]["fleet"] == {
            "status": "fail",
            "detail": "fleetctl failed: Error retrieving list of active machines from fleet API "
            "(googleapi: Error 503: fleet server unable to communicate with etcd)",
        }
    assert nodes["core-03"]["fleet"] == {
        "status": "fail",
        "detail": "fleetctl failed: Error retrieving list of active machines: "
        "googleapi: Error 503: fleet server unable to communicate with etcd",
    }
    assert all(node["units"]["status"] == "pass" for node in nodes.values())


def test_a_node_whose_fleet_is_down_is_missing_from_the_others_view(cluster: NetnsCluster, tmp_path: Path) -> None:
    """fleet lists only live machines: with core-03's fleet stopped the others see two; core-03's own fleetctl
    finds no fleet socket, and that (not fleet 1.0's generic hint about etcd quorum) is what it reports."""
    for i in (1, 2):
        install(cluster, i, gone=("172.17.8.103",))
    install(
        cluster, 3, units={"etcd2": "active", "fleet": "inactive"}, list_machines="list-machines.fleet-1.0.no-fleetd"
    )
    run = health(cluster, tmp_path)
    assert run.returncode == ExitCode.UNHEALTHY
    nodes = checks(run)
    for name in ("core-01", "core-02"):
        assert nodes[name]["fleet"] == {
            "status": "fail",
            "detail": "fleet sees 2 of 3 machines (172.17.8.102, 172.17.8.101)",
        }
        assert nodes[name]["units"]["status"] == "pass"
    fleet = nodes["core-03"]["fleet"]
    assert fleet["status"] == "fail"
    assert fleet["detail"] == (
        "fleetctl failed: Error retrieving list of active machines from fleet API (Get http://domain-sock/fleet/v1/"
        "machines?alt=json: dial unix /var/run/fleet.sock: connect: no such file or directory)"
    )
    assert nodes["core-03"]["units"] == {"status": "fail", "detail": "etcd2: active, fleet: inactive"}


# ---------------------------------------------------------------- smoke's fleet unit stage


def smoke(cluster: NetnsCluster, tmp_path: Path, *args: str) -> tuple[LabRun, dict[str, ET.Element]]:
    """`lab smoke --ssh-config` with every CoreOS check (units, etcd, members, fleet): etcd is real."""
    config = cluster.write_ssh_config(tmp_path / "ssh_config")
    junit = tmp_path / "smoke.xml"
    run = lab(
        "smoke", "--ssh-config", config, "--distro", "coreos", "--junit", junit, "--json", *args,
        env={"HOME": str(tmp_path)}, timeout=180,
    )  # fmt: skip
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None
    return run, {case.get("name", ""): case for case in suite.iter("testcase")}


@pytest.mark.etcd
def test_smoke_starts_a_unit_through_fleet_and_destroys_it(cluster: NetnsCluster, tmp_path: Path) -> None:
    cluster.start_all_etcd()
    for i in cluster.nodes:
        install(cluster, i)
    run, cases = smoke(cluster, tmp_path, "--timeout", "120")
    assert run.returncode == ExitCode.OK, run.stderr
    assert sorted(cases) == ["etcd round trip", "fleet unit", "health core-01", "health core-02", "health core-03"]
    assert all(len(case) == 0 for case in cases.values())  # no failure, error or skipped element
    registry = read_registry(registry_path(cluster))
    (started,) = registry["started"]
    name = Path(started["file"]).name
    assert name.startswith("lab-smoke-") and name.endswith(".service")
    # Found among the cluster's other units once fleet listed it running, on the machine fleet launched it on.
    stage = next(c for c in run.json()["cases"] if c["name"] == "fleet unit")
    assert stage["message"] == f"{name} running on 113f16a7.../172.17.8.103"
    # The unit sent to fleet was the smoke's own; afterwards it is destroyed and its file on the node removed.
    assert "[Service]\nExecStart=" in started["text"]
    assert registry["destroyed"] == [name] and registry["units"] == {}
    assert not Path(started["file"]).exists()


@pytest.mark.etcd
def test_smoke_fails_a_unit_fleet_never_runs_and_still_cleans_up(cluster: NetnsCluster, tmp_path: Path) -> None:
    cluster.start_all_etcd()
    for i in cluster.nodes:
        install(cluster, i)
    registry_file = registry_path(cluster)
    write_registry(registry_file, {**read_registry(registry_file), "comes_up": ["failed", "failed"]})
    run, cases = smoke(cluster, tmp_path, "--timeout", "8")
    assert run.returncode == ExitCode.UNHEALTHY, run.stderr
    failure = cases["fleet unit"].find("failure")
    assert failure is not None
    assert "not running after" in failure.get("message", "") and "(failed/failed)" in failure.get("message", "")
    assert cases["etcd round trip"].find("failure") is None
    registry = read_registry(registry_file)
    (started,) = registry["started"]
    assert registry["destroyed"] == [Path(started["file"]).name] and registry["units"] == {}
    assert not Path(started["file"]).exists()
