"""`lab up` waits for health over real SSH to real etcd members.

The machines cannot be VirtualBox VMs here, so `vagrant` is the stand-in (tests/harness/standin_vagrant.py)
whose `ssh-config` describes nodes of the namespace harness: real sshd and real etcd 3.4 per node. The
nodes have no systemd (a stand-in `systemctl` says so, as it does in a container, even where the host's systemd
would answer), so the unit check can never pass there: `lab up` must keep checking over SSH until its deadline
and then exit 5 naming the failing check of each node, while the etcd checks pass.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from harness.cli import lab
from harness.lifecycle_labs import install_standins, make_lab
from harness.netns import netns_cluster

from coreos_lab.errors import ExitCode

pytestmark = [pytest.mark.integration, pytest.mark.netns, pytest.mark.etcd]


# systemctl where systemd is not PID 1. A host's systemd would call etcd-member "inactive", and health would then
# skip the etcd checks instead of running them.
NO_SYSTEMD = """#!/bin/sh
echo "System has not been booted with systemd as init system (PID 1). Can't operate." >&2
exit 1
"""


def test_up_waits_for_health_until_the_deadline(tmp_path: Path) -> None:
    with netns_cluster(tmp_path / "nodes", 3) as cluster:
        for i in cluster.nodes:
            cluster.install_tool(i, "systemctl", NO_SYSTEMD)
        cluster.start_all_etcd()  # waits until the members are healthy
        etcdctl_calls = [cluster.log_calls(i, "etcdctl") for i in cluster.nodes]  # to count the health rounds
        # The harness's bridge holds 172.17.8.0/24 on this host: the lab itself uses another subnet.
        lab_dir, env = make_lab(tmp_path, distro="flatcar", subnet="192.168.61.0/24")
        env.update(install_standins(tmp_path, ["core-01", "core-02", "core-03"]))
        env["STANDIN_SSH_CONFIG"] = str(cluster.write_ssh_config(tmp_path / "ssh_config"))
        run = lab("up", lab_dir, "--timeout", "20", env=env)
        rounds = [calls.read_text().count("endpoint status") for calls in etcdctl_calls]
    assert run.returncode == ExitCode.TIMEOUT, run.stderr
    assert "not healthy after" in run.stderr and "core-01 units: etcd-member: System has not been booted" in run.stderr
    failing = run.stderr.split("not healthy after", 1)[1]
    assert " etcd:" not in failing and " members:" not in failing  # etcd itself was found healthy over SSH
    # It kept checking: every node was asked round after round (each round begins with the local v3 status).
    assert all(count >= 2 for count in rounds), rounds
    state = json.loads((lab_dir / ".lab" / "state.json").read_text())
    assert state["cluster_created_at"] is not None  # the machines exist; only health is missing


def test_up_with_selected_checks_is_healthy(tmp_path: Path) -> None:
    """`--check` selects what `up` waits for, as in `lab health`: here the etcd checks, which pass over SSH.
    With Vagrant's own log switched on (its lines go to stderr), as when a user debugs Vagrant."""
    with netns_cluster(tmp_path / "nodes", 3) as cluster:
        cluster.start_all_etcd()
        lab_dir, env = make_lab(tmp_path, distro="coreos", subnet="192.168.61.0/24")
        env.update(install_standins(tmp_path, ["core-01", "core-02", "core-03"]))
        env["STANDIN_SSH_CONFIG"] = str(cluster.write_ssh_config(tmp_path / "ssh_config"))
        env.update(HOME=str(tmp_path), VAGRANT_LOG="info", VAGRANT_LOG_TIMESTAMP="1")
        run = lab("up", lab_dir, "--check", "etcd", "--check", "members", "--timeout", "60", "--json", env=env)
    assert run.returncode == ExitCode.OK, run.stderr
    health = run.json()["health"]
    assert health["healthy"] is True and health["checks"] == ["etcd", "members"]
    assert sorted(health["nodes"]) == ["core-01", "core-02", "core-03"]


def test_ssh_config_is_read_while_vagrant_still_provisions(tmp_path: Path) -> None:
    """`vagrant ssh-config` runs once every machine has booted, not after the ups: the first health round
    does not wait for its Ruby start-up."""
    with netns_cluster(tmp_path / "nodes", 3) as cluster:
        cluster.start_all_etcd()
        lab_dir, env = make_lab(tmp_path, distro="coreos", subnet="192.168.61.0/24")
        env.update(install_standins(tmp_path, ["core-01", "core-02", "core-03"]))
        env.update(STANDIN_SSH_CONFIG=str(cluster.write_ssh_config(tmp_path / "ssh_config")), HOME=str(tmp_path))
        # Provisioning lasts until ssh-config has run, or 60 s: read after the ups, it would come after their end.
        env.update(STANDIN_PROVISION_UNTIL_SSH_CONFIG="1", STANDIN_PROVISION_SECONDS="60")
        run = lab("up", lab_dir, "--check", "etcd", "--check", "members", "--timeout", "120", "--json", env=env)
    assert run.returncode == ExitCode.OK, run.stderr
    calls = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    ups = [c for c in calls if c["argv"][0] == "up"]
    ssh_configs = [c for c in calls if c["argv"][0] == "ssh-config"]
    assert len(ssh_configs) == 1
    assert ssh_configs[0]["start"] < min(c["end"] for c in ups)  # while all three were still provisioning
