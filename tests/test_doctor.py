"""`lab doctor` checks, against the real machine: Debian's Vagrant, real routes in a namespace. VirtualBox cannot
run here: its absence is a PATH without VBoxManage, its presence a stand-in VBoxManage, so the tests hold on a
machine that has it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from harness.cli import lab
from harness.tool_path import VIRTUALBOX_TOOLS, path_without

from coreos_lab.doctor import port_free
from coreos_lab.errors import ExitCode
from coreos_lab.vagrant.virtualbox import (
    debian_breaks,
    hostonly_ranges,
    known_bad_pair,
    supported_virtualbox_series,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.debian
def test_debian_vagrant_declares_it_breaks_virtualbox_7_1() -> None:
    """The packaged Vagrant's own control field, read through dpkg (Breaks: virtualbox (>= 7.1))."""
    assert debian_breaks("vagrant", "virtualbox") == (">=", "7.1")
    message = known_bad_pair("2.3.4", "7.1.4r165100")
    assert message is not None and "breaks VirtualBox >= 7.1" in message and "7.1.4r165100" in message


@pytest.mark.debian
def test_installed_vagrant_driver_table_is_read() -> None:
    series = supported_virtualbox_series("2.3.4")
    assert "7.0" in series and "6.1" in series and "7.1" not in series
    assert known_bad_pair("2.3.4", "7.0.14r161095") is None
    message = known_bad_pair("2.3.4", "3.2.28")
    assert message is not None and "4.0–7.0 only" in message


def test_port_free_sees_a_listening_socket() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert not port_free("127.0.0.1", port)
    assert port_free("127.0.0.1", port)


@pytest.mark.integration
@pytest.mark.vagrant
def test_doctor_without_a_lab_reports_virtualbox_missing(tmp_path: Path) -> None:
    env = {"VAGRANT_HOME": str(tmp_path / "vagrant.d"), "PATH": path_without(tmp_path / "bin", *VIRTUALBOX_TOOLS)}
    run = lab("doctor", tmp_path, "--json", env=env)
    assert run.returncode == ExitCode.MISSING_TOOL, run.stderr
    report = run.json()
    assert report["ok"] is False
    by_check = {f["check"]: f for f in report["findings"]}
    assert by_check["vagrant"]["level"] == "ok" and by_check["vagrant"]["detail"].startswith("Vagrant 2.")
    assert by_check["virtualbox"]["level"] == "fail"
    assert "VirtualBox not found" in by_check["virtualbox"]["detail"]
    assert "VirtualBox" in by_check["virtualbox"]["fix"]


@pytest.mark.integration
@pytest.mark.vagrant
def test_doctor_human_output_goes_to_stderr(tmp_path: Path) -> None:
    env = {"VAGRANT_HOME": str(tmp_path / "vagrant.d"), "PATH": path_without(tmp_path / "bin", *VIRTUALBOX_TOOLS)}
    run = lab("doctor", tmp_path, env=env)
    assert run.returncode == ExitCode.MISSING_TOOL
    assert run.stdout == ""
    assert "fail  virtualbox: VirtualBox not found" in run.stderr
    assert "fix: install VirtualBox" in run.stderr


SUBNET_PROBE = """
import ipaddress, json, sys
from pathlib import Path
from coreos_lab.doctor import check_subnet
from coreos_lab.prerequisites import DoctorContext
from coreos_lab.lab.plan import LabPlan
plan = LabPlan(Path('.'), ('core-01',), 'virtualbox', 'coreos', 'coreos-stable', None, 'http://127.0.0.1:8080',
               subnet=ipaddress.IPv4Network(sys.argv[1]))
print(json.dumps([f.as_dict() for f in check_subnet(DoctorContext(plan, 'virtualbox', Path('.')))]))
"""


@pytest.mark.integration
@pytest.mark.netns
def test_subnet_clash_with_docker0_route_in_a_namespace() -> None:
    """A namespace with a real bridge named docker0 on 172.17.0.0/16 (Docker's default), read via `ip -j route`."""
    ns = f"lab-doctor-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        for cmd in (
            ["link", "add", "docker0", "type", "bridge"],
            ["addr", "add", "172.17.0.1/16", "dev", "docker0"],
            ["link", "set", "docker0", "up"],
        ):
            subprocess.run(["ip", "-n", ns, *cmd], check=True)

        def probe(subnet: str) -> list[dict[str, str]]:
            out = subprocess.run(
                ["ip", "netns", "exec", ns, sys.executable, "-c", SUBNET_PROBE, subnet],
                capture_output=True,
                text=True,
                check=True,
                env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])},
            ).stdout
            return json.loads(out)

        clash = probe("172.17.8.0/24")
        assert [f["level"] for f in clash] == ["fail"]
        assert "172.17.8.0/24 overlaps 172.17.0.0/16 on docker0" in clash[0]["detail"]
        assert "bip" in clash[0]["fix"]
        assert [f["level"] for f in probe("172.28.8.0/24")] == ["ok"]
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


VBOXDRV_WARNING = """WARNING: The vboxdrv kernel module is not loaded. Either there is no module
         available for the current kernel (6.1.0-18-amd64) or it failed to
         load. Please recompile the kernel module and install it by

           sudo /sbin/vboxconfig

         You will not be able to start VMs until this problem is fixed.
"""


def _fake_vboxmanage(bin_dir: Path, output: str) -> dict[str, str]:
    """A stand-in VBoxManage (VirtualBox cannot be installed here) printing what the real one prints."""
    bin_dir.mkdir()
    tool = bin_dir / "VBoxManage"
    tool.write_text(f"#!/bin/sh\ncat <<'EOF'\n{output}EOF\n")
    tool.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


@pytest.mark.integration
@pytest.mark.vagrant
@pytest.mark.parametrize(
    ("output", "check", "expected"),
    [
        pytest.param(
            "7.1.4r165100\n",
            "virtualbox-vagrant",
            "declares it breaks VirtualBox >= 7.1; found VirtualBox 7.1.4r165100",
            marks=pytest.mark.debian,  # the Breaks: field of Debian's vagrant package
        ),
        (VBOXDRV_WARNING + "7.0.14r161095\n", "virtualbox", "kernel module (vboxdrv) is not loaded"),
    ],
)
def test_doctor_fails_on_known_virtualbox_traps(tmp_path: Path, output: str, check: str, expected: str) -> None:
    env = _fake_vboxmanage(tmp_path / "bin", output)
    env["VAGRANT_HOME"] = str(tmp_path / "vagrant.d")
    run = lab("doctor", tmp_path, "--json", env=env)
    assert run.returncode == ExitCode.MISSING_TOOL, run.stderr
    finding = next(f for f in run.json()["findings"] if f["level"] == "fail")
    assert finding["check"] == check and expected in finding["detail"]


@pytest.mark.integration
@pytest.mark.vagrant
def test_doctor_passes_with_a_supported_virtualbox(tmp_path: Path) -> None:
    env = _fake_vboxmanage(tmp_path / "bin", "7.0.14r161095\n")
    env["VAGRANT_HOME"] = str(tmp_path / "vagrant.d")
    run = lab("doctor", tmp_path, "--json", env=env)
    assert run.returncode == 0, run.stdout
    levels = {f["check"]: f["level"] for f in run.json()["findings"]}
    assert levels["virtualbox"] == "ok" and levels["virtualbox-vagrant"] == "ok"


def test_hostonly_ranges_of_networks_conf() -> None:
    assert [str(n) for n in hostonly_ranges(None)] == ["192.168.56.0/21"]
    text = "# comment\n* 10.0.0.0/8 192.168.0.0/16\n* 2001::/64\nnot a range\n"
    assert [str(n) for n in hostonly_ranges(text)] == ["10.0.0.0/8", "192.168.0.0/16", "2001::/64"]


# `lab doctor` reading VirtualBox's networks.conf from a path the test chooses instead of /etc/vbox/networks.conf,
# which belongs to the machine (VirtualBox cannot run here; a contributor's may have the file). The rest is the
# real CLI.
DOCTOR_WITH_NETWORKS_CONF = """
import sys
from pathlib import Path
import coreos_lab.vagrant.virtualbox
coreos_lab.vagrant.virtualbox.VBOX_NETWORKS_CONF = Path(sys.argv.pop(1))
from coreos_lab.cli import main
main()
"""


def doctor_network_finding(networks_conf: Path, lab_dir: Path, env: dict[str, str]) -> dict[str, str]:
    argv = [sys.executable, "-c", DOCTOR_WITH_NETWORKS_CONF, str(networks_conf), "doctor", str(lab_dir), "--json"]
    run = subprocess.run(argv, env={**os.environ, **env}, capture_output=True, text=True, timeout=300)
    assert run.returncode in (0, ExitCode.MISSING_TOOL), run.stderr
    finding: dict[str, str] = next(f for f in json.loads(run.stdout)["findings"] if f["check"] == "virtualbox-network")
    return finding


@pytest.mark.integration
@pytest.mark.vagrant
def test_doctor_flags_a_subnet_virtualbox_will_refuse(tmp_path: Path) -> None:
    """coreos-vagrant's 172.17.8.0/24 is outside VirtualBox ≥ 6.1.28's default host-only range."""
    from harness.lifecycle_labs import make_lab

    absent = tmp_path / "vbox" / "networks.conf"  # never written: the default range applies
    lab_dir, env = make_lab(tmp_path, subnet="172.30.8.0/24")
    env.update(_fake_vboxmanage(tmp_path / "bin", "7.0.14r161095\n"))
    finding = doctor_network_finding(absent, lab_dir, env)
    assert finding["level"] == "fail"
    assert "only in 192.168.56.0/21" in finding["detail"] and "172.30.8.0/24" in finding["detail"]
    assert f"* 172.30.8.0/24` to {absent}" in finding["fix"]
    (tmp_path / "inside").mkdir()
    inside, inside_env = make_lab(tmp_path / "inside", subnet="192.168.60.0/24")
    inside_env["PATH"] = env["PATH"]  # the same stand-in VBoxManage
    assert doctor_network_finding(absent, inside, inside_env)["level"] == "ok"
    # A networks.conf that lists the subnet makes it allowed, and the default range is then gone.
    listed = tmp_path / "networks.conf"
    listed.write_text("* 10.0.0.0/8 172.30.8.0/24\n")
    assert doctor_network_finding(listed, lab_dir, env)["level"] == "ok"
    refused = doctor_network_finding(listed, inside, inside_env)
    assert refused["level"] == "fail" and "only in 10.0.0.0/8, 172.30.8.0/24" in refused["detail"]
