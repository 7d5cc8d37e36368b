"""`lab health DIR` on a lab whose machines are not all running.

VirtualBox cannot run on the test machines, so `vagrant` is the stand-in (tests/harness/standin_vagrant.py): it
keeps machine states as Vagrant does and, like Vagrant, refuses `ssh-config` for a machine that is not running.
The machines it describes are nodes of the namespace harness: real sshd and etcd 3.4 each. Halting a machine
there only marks it halted, so the test stops that node's etcd itself, as the halt would have, and leaves its sshd
running: the login count in sshd's log then proves that health never tried to reach it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from harness.cli import lab
from harness.lifecycle_labs import install_standins, make_lab
from harness.netns import NetnsCluster

from coreos_lab.errors import ExitCode

pytestmark = [pytest.mark.integration, pytest.mark.netns, pytest.mark.etcd]

ETCD_CHECKS = ("--check", "etcd", "--check", "members")
NODES = ["core-01", "core-02", "core-03"]


def running_lab(cluster: NetnsCluster, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A lab brought up with the stand-in Vagrant over the cluster's nodes, its etcd healthy."""
    cluster.start_all_etcd()
    lab_dir, env = make_lab(tmp_path, distro="coreos", subnet="192.168.61.0/24")  # the bridge holds 172.17.8.0/24
    env.update(install_standins(tmp_path, NODES))
    env.update(STANDIN_SSH_CONFIG=str(cluster.write_ssh_config(tmp_path / "ssh_config")), HOME=str(tmp_path))
    up = lab("up", lab_dir, *ETCD_CHECKS, "--timeout", "120", env=env)
    assert up.returncode == ExitCode.OK, up.stderr
    return lab_dir, env


def logins(cluster: NetnsCluster, i: int) -> int:
    return (cluster.nodes[i].workdir / "sshd.log").read_text().count("Accepted publickey")


def test_a_halted_machine_fails_unasked_and_the_others_are_checked(cluster: NetnsCluster, tmp_path: Path) -> None:
    lab_dir, env = running_lab(cluster, tmp_path)
    assert lab("halt", lab_dir, "core-02", env=env).returncode == ExitCode.OK
    cluster.kill_etcd(2)  # what halting its machine does to the member
    before = logins(cluster, 2)

    run = lab("health", lab_dir, *ETCD_CHECKS, "--json", env=env, timeout=120)
    assert run.returncode == ExitCode.UNHEALTHY, run.stderr
    report = run.json()
    down = report["nodes"]["core-02"]
    assert down["machine"] == "poweroff" and down["healthy"] is False and down["etcd_cluster"] is None
    assert down["checks"]["etcd"] == {"status": "fail", "detail": "not asked: the machine is poweroff"}
    assert down["checks"]["members"]["status"] == "fail"
    for name in ("core-01", "core-03"):
        node = report["nodes"][name]
        assert node["machine"] is None and node["etcd_cluster"] == "degraded"
        assert "172.17.8.102" in node["checks"]["etcd"]["detail"]  # the survivors name the member they miss
    assert report["etcd_cluster"] == "degraded"
    assert "core-02 etcd: not asked: the machine is poweroff" in run.stderr

    table = lab("health", lab_dir, *ETCD_CHECKS, env=env, timeout=120)
    assert table.returncode == ExitCode.UNHEALTHY and table.stdout == ""
    assert "poweroff" in table.stderr and "etcd: cluster degraded" in table.stderr

    # Waiting cannot start a machine: one round, exit 3 rather than 5 at the deadline.
    waited = lab("health", lab_dir, *ETCD_CHECKS, "--wait", "600", "--json", env=env, timeout=120)
    assert waited.returncode == ExitCode.UNHEALTHY, waited.stderr
    assert waited.json()["nodes"]["core-02"]["machine"] == "poweroff"
    assert "not waiting: machines not running: core-02 (poweroff)" in waited.stderr
    assert logins(cluster, 2) == before  # never an SSH attempt to the halted machine


def test_a_lab_with_no_machine_running_is_the_run_lab_up_error(cluster: NetnsCluster, tmp_path: Path) -> None:
    lab_dir, env = running_lab(cluster, tmp_path)
    assert lab("halt", lab_dir, env=env).returncode == ExitCode.OK
    for args in ((), ("--wait", "60")):
        run = lab("health", lab_dir, *ETCD_CHECKS, *args, "--json", env=env, timeout=120)
        assert run.returncode == ExitCode.UNHEALTHY
        error = run.json()["error"]  # one JSON document on stdout, the error too
        assert error["exit_code"] == ExitCode.UNHEALTHY
        assert "not running (core-01 poweroff, core-02 poweroff, core-03 poweroff)" in error["message"]
        assert error["hint"] == f"run `lab up {lab_dir}`"
        assert "error: " in run.stderr
