"""`lab drill` on a lab: machines halted and booted through Vagrant, links through the provider.

VirtualBox cannot run on the test machines: `vagrant` is the stand-in (tests/harness/standin_vagrant.py) and
`VBoxManage` a stand-in that records its arguments, so these tests show which commands the drills give the
provider, not what VirtualBox then does (the real-VM drills run on libvirt: tests/test_libvirt_drill.py). No drill
here reaches a node over SSH: the stand-in's ssh-config names hosts that nothing answers for.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from harness.cli import lab
from harness.lifecycle_labs import install_standins, make_lab

from coreos_lab.errors import ExitCode

pytestmark = pytest.mark.integration

NODES = ["core-01", "core-02", "core-03"]
RECORDING_VBOXMANAGE = """#!/bin/sh
[ "$1" = --version ] && { echo 7.0.14r161095; exit 0; }
echo "$*" >>"$VBOX_CALLS"
"""


@pytest.fixture
def lab_up(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A lab whose three machines the stand-in Vagrant has brought up."""
    lab_dir, env = make_lab(tmp_path)
    env.update(install_standins(tmp_path, NODES))
    (tmp_path / "bin" / "VBoxManage").write_text(RECORDING_VBOXMANAGE)
    config = tmp_path / "ssh_config"
    config.write_text("".join(f"Host {n}\n  HostName 192.0.2.{i}\n  User core\n\n" for i, n in enumerate(NODES, 1)))
    env.update(STANDIN_SSH_CONFIG=str(config), VBOX_CALLS=str(tmp_path / "vbox.calls"), HOME=str(tmp_path))
    assert lab("up", lab_dir, "--no-wait", env=env).returncode == ExitCode.OK
    return lab_dir, env


def vbox_calls(env: dict[str, str]) -> list[str]:
    path = Path(env["VBOX_CALLS"])
    return path.read_text().splitlines() if path.exists() else []


def test_partition_and_heal_pull_and_plug_the_private_nic(lab_up: tuple[Path, dict[str, str]]) -> None:
    lab_dir, env = lab_up
    cut = lab("drill", "partition", lab_dir, "core-03", "--json", env=env)
    assert cut.returncode == ExitCode.OK, cut.stderr
    assert cut.json()["actions"] == ["core-03: VirtualBox NIC 2 cable disconnected (VBoxManage controlvm)"]
    assert vbox_calls(env) == ["controlvm standin-core-03 setlinkstate2 off"]  # the VM id Vagrant recorded
    healed = lab("drill", "heal", lab_dir, env=env)
    assert healed.returncode == ExitCode.OK, healed.stderr
    assert vbox_calls(env)[1:] == [f"controlvm standin-{n} setlinkstate2 on" for n in NODES]


def test_stop_and_start_a_machine(tmp_path: Path, lab_up: tuple[Path, dict[str, str]]) -> None:
    lab_dir, env = lab_up
    stopped = lab("drill", "stop", lab_dir, "core-02", env=env)
    assert stopped.returncode == ExitCode.OK, stopped.stderr
    status = lab("status", lab_dir, "--json", env=env).json()
    assert [n["state"] for n in status["nodes"]] == ["running", "poweroff", "running"]

    # Drills that need core-02 running refuse, naming its state, and do nothing.
    for drill in (["kill-etcd", "core-02"], ["partition", "core-02"], ["quorum"]):
        refused = lab("drill", drill[0], lab_dir, *drill[1:], env=env)
        assert refused.returncode == ExitCode.USAGE, refused.stderr
        assert "core-02" in refused.stderr and "poweroff" in refused.stderr
    assert vbox_calls(env) == []

    started = lab("drill", "start", lab_dir, "core-02", "--json", env=env)
    assert started.returncode == ExitCode.OK, started.stderr
    assert started.json()["actions"] == ["core-02: booted (vagrant up); etcd2 starts with it"]
    ups = [json.loads(line)["argv"] for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    assert ups[-1][:2] == ["up", "core-02"]
    assert lab("status", lab_dir, "--json", env=env).json()["nodes"][1]["state"] == "running"


def test_a_lab_that_is_not_up_is_refused(tmp_path: Path) -> None:
    lab_dir, env = make_lab(tmp_path)
    env.update(install_standins(tmp_path, NODES))
    assert lab("render", lab_dir, env=env).returncode == ExitCode.OK
    for drill in (["partition", "core-01"], ["kill-etcd", "core-01"], ["quorum"], ["heal"]):
        run = lab("drill", drill[0], lab_dir, *drill[1:], "--json", env=env)
        assert run.returncode == ExitCode.USAGE, run.stderr
        error = run.json()["error"]
        assert "not running" in error["message"] and "drills need a running lab" in error["message"]
        assert error["hint"] == f"run `lab up {lab_dir}`"


def test_unknown_node_of_a_lab_names_the_lab_yaml(lab_up: tuple[Path, dict[str, str]]) -> None:
    lab_dir, env = lab_up
    run = lab("drill", "stop", lab_dir, "core-7", env=env)
    assert run.returncode == ExitCode.USAGE
    assert f"no node 'core-7' in {lab_dir / 'lab.yaml'}" in run.stderr
    assert vbox_calls(env) == []


def test_quorum_needs_three_members(tmp_path: Path) -> None:
    """Refused before any fault: with two members, one down already leaves no quorum."""
    config = tmp_path / "ssh_config"
    config.write_text("Host a\n  HostName 192.0.2.1\n\nHost b\n  HostName 192.0.2.2\n")
    run = lab("drill", "quorum", "--ssh-config", config, "--distro", "flatcar", env={"HOME": str(tmp_path)})
    assert run.returncode == ExitCode.USAGE
    assert "needs at least 3 etcd members; this cluster has 2 (a, b)" in run.stderr


def test_packet_filtering_needs_each_hosts_own_address(tmp_path: Path) -> None:
    """Hosts behind forwarded ports on 127.0.0.1 (what `vagrant ssh-config` prints): dropping "the others'
    addresses" would cut each guest off from its own loopback. Refused before any node is reached."""
    config = tmp_path / "ssh_config"
    config.write_text("".join(f"Host {n}\n  HostName 127.0.0.1\n  Port {2222 + i}\n\n" for i, n in enumerate(NODES)))
    run = lab(
        "drill", "partition", "--ssh-config", config, "--distro", "coreos", "core-02", env={"HOME": str(tmp_path)}
    )
    assert run.returncode == ExitCode.USAGE
    assert "HostName 127.0.0.1 is no address of one node of its own" in run.stderr
