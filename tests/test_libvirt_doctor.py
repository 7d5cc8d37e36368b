"""`lab doctor` for provider: libvirt: the daemon's socket, the vagrant-libvirt plugin, whether KVM runs guests (and
whether this user may open /dev/kvm, as on a CI runner), and the management network against routes and libvirt's
other networks."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from harness.cli import LabRun, lab
from harness.libvirt_ns import LibvirtNamespace

from coreos_lab.errors import ExitCode
from coreos_lab.prerequisites import DoctorContext
from coreos_lab.vagrant import libvirt
from coreos_lab.vagrant.libvirt import check_libvirt


@pytest.mark.integration
@pytest.mark.vagrant
@pytest.mark.libvirt
@pytest.mark.netns
def test_doctor_with_a_running_libvirtd(tmp_path: Path, libvirt_ns: LibvirtNamespace) -> None:
    env = {"VAGRANT_HOME": str(tmp_path / "vagrant.d"), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    run = lab("doctor", tmp_path, "--provider", "libvirt", "--json", env=env, prefix=libvirt_ns.prefix())
    findings = {f["check"]: f for f in run.json()["findings"]}
    assert findings["libvirtd"]["level"] == "ok"
    assert findings["vagrant-libvirt"]["level"] == "ok"
    kvm = libvirt.kvm_check()
    assert findings["kvm"]["level"] == ("ok" if kvm.usable else "warn")
    assert ("qemu" in findings["kvm"]["detail"]) is not kvm.usable


def test_no_libvirt_daemon_is_a_failure_with_a_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sockets pointed at an empty directory: what a host without libvirtd looks like to the check."""
    monkeypatch.setattr(libvirt, "LIBVIRT_SOCKETS", (str(tmp_path / "libvirt-sock"),))
    ctx = DoctorContext(plan=None, provider="libvirt", mirror_root=tmp_path)
    (daemon, *_) = [f for f in check_libvirt(ctx) if f.check == "libvirtd"]
    assert daemon.level == "fail"
    assert "libvirtd" in (daemon.fix or "")


REPO = Path(__file__).resolve().parents[1]


def _findings(run: LabRun) -> dict[str, dict[str, str]]:
    return {f["check"]: f for f in run.json()["findings"]}


@pytest.mark.integration
@pytest.mark.vagrant
def test_a_kvm_device_this_user_may_not_open_gets_the_udev_rule(tmp_path: Path) -> None:
    """`lab doctor` as an unprivileged user (nobody) on this host, whose /dev/kvm is root:kvm 0660 like a hosted
    runner's: the finding names the device and gives the udev rule that opens it."""
    kvm = Path("/dev/kvm")
    if not kvm.is_char_device() or kvm.stat().st_mode & 0o006:
        pytest.fail("this test needs a host whose /dev/kvm only root and group kvm may open")
    home = Path(tempfile.mkdtemp(prefix="lab-doctor-nobody-"))
    try:
        home.chmod(0o777)
        run = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m", "coreos_lab",
             "doctor", "--provider", "libvirt", "--json"],
            cwd=home, capture_output=True, text=True, timeout=300,
            env={**os.environ, "HOME": str(home), "VAGRANT_HOME": str(home / "vagrant.d"),
                 "XDG_CACHE_HOME": str(home / "cache"), "PYTHONPATH": str(REPO)},
        )  # fmt: skip
        finding = _findings(LabRun(run.returncode, run.stdout, run.stderr))["kvm"]
    finally:
        shutil.rmtree(home, ignore_errors=True)
    assert finding["level"] == "warn"
    assert "/dev/kvm is there, but this user may not open it" in finding["detail"]
    assert libvirt.KVM_UDEV_RULE in finding["fix"] and "udevadm trigger --name-match=kvm" in finding["fix"]


@pytest.mark.integration
@pytest.mark.vagrant
@pytest.mark.debian
def test_vagrant_without_the_libvirt_plugin_gets_the_install_command(tmp_path: Path) -> None:
    """Debian's Vagrant with its system plugin directory hidden (an empty tmpfs over it, in a mount namespace of
    this test's own): what a runner that installed Vagrant alone looks like."""
    env = {"VAGRANT_HOME": str(tmp_path / "vagrant.d"), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    hide = ["unshare", "--mount", "sh", "-c", 'mount -t tmpfs none /usr/share/vagrant-plugins && exec "$@"', "sh"]
    finding = _findings(lab("doctor", "--provider", "libvirt", "--json", env=env, prefix=hide))["vagrant-libvirt"]
    assert finding["level"] == "fail"
    assert finding["detail"] == "the vagrant-libvirt plugin is not installed"
    assert finding["fix"].startswith("sudo apt-get install -y vagrant-libvirt")
    assert "vagrant plugin install vagrant-libvirt" in finding["fix"]  # HashiCorp's Vagrant


@pytest.mark.integration
@pytest.mark.netns
def test_a_route_on_the_management_network_is_a_clash_with_a_free_range_to_use(tmp_path: Path) -> None:
    """A namespace whose bridge vpn0 holds 192.168.121.0/24 (vagrant-libvirt's default network), like a VPN."""
    ns = f"lab-mgmt-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        for cmd in (["link", "add", "vpn0", "type", "bridge"], ["addr", "add", "192.168.121.7/24", "dev", "vpn0"],
                    ["link", "set", "vpn0", "up"]):  # fmt: skip
            subprocess.run(["ip", "-n", ns, *cmd], check=True)
        env = {"VAGRANT_HOME": str(tmp_path / "vagrant.d"), "XDG_CACHE_HOME": str(tmp_path / "cache")}
        run = lab("doctor", "--provider", "libvirt", "--json", env=env, prefix=["ip", "netns", "exec", ns])
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    finding = _findings(run)["management-network"]
    assert finding["level"] == "fail", finding
    assert "192.168.121.0/24 overlaps 192.168.121.0/24 on vpn0" in finding["detail"]
    # The next /24 that neither a route nor a libvirt network holds (a libvirtd running here has 192.168.122.0/24).
    suggested = re.fullmatch(r"set libvirt\.management_network: (192\.168\.\d+\.0/24) in lab\.yaml", finding["fix"])
    assert suggested is not None and suggested.group(1) != "192.168.121.0/24", finding["fix"]
    assert run.returncode == ExitCode.MISSING_TOOL


@pytest.mark.integration
@pytest.mark.vagrant
@pytest.mark.libvirt
@pytest.mark.netns
def test_libvirt_networks_clashing_with_the_management_network(tmp_path: Path, libvirt_ns: LibvirtNamespace) -> None:
    """Networks defined in the test's own libvirtd: another one on the management network's subnet, then a
    `vagrant-libvirt` network with a subnet other than the lab's."""
    env = {"VAGRANT_HOME": str(tmp_path / "vagrant.d"), "XDG_CACHE_HOME": str(tmp_path / "cache")}

    def define(name: str, subnet: str) -> None:
        xml = tmp_path / f"{name}.xml"
        xml.write_text(libvirt.management_network_xml(subnet, name))
        libvirt_ns.virsh("net-define", str(xml))

    def finding() -> dict[str, str]:
        return _findings(lab("doctor", "--provider", "libvirt", "--json", env=env, prefix=libvirt_ns.prefix()))[
            "management-network"
        ]

    try:
        assert finding()["level"] == "ok"
        define("team-net", "192.168.121.0/24")
        clash = finding()
        assert clash["level"] == "fail"
        assert "libvirt network team-net (192.168.121.0/24) overlaps the management network" in clash["detail"]
        assert "virsh net-destroy team-net && virsh net-undefine team-net" in clash["fix"]
        assert "libvirt.management_network: 192.168.122.0/24" not in clash["fix"]  # libvirt's own default is taken
        libvirt_ns.virsh("net-undefine", "team-net")
        define("vagrant-libvirt", "192.168.150.0/24")
        mismatch = finding()
        assert mismatch["level"] == "fail"
        assert "vagrant-libvirt exists with 192.168.150.0/24, not the lab's management network" in mismatch["detail"]
        assert mismatch["fix"].startswith("set libvirt.management_network: 192.168.150.0/24 in lab.yaml")
    finally:
        libvirt_ns.clean()


@pytest.mark.integration
@pytest.mark.vagrant
def test_the_plugin_version_is_remembered_until_a_plugin_registry_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`vagrant plugin list` (~1.5 s of Ruby) runs once; its answer is kept, keyed by the vagrant executable and
    Vagrant's plugin registries, and asked again once one of them changes (a plugin installed or removed)."""
    home = tmp_path / "vagrant.d"
    monkeypatch.setenv("VAGRANT_HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    real = libvirt.vagrant_libvirt_plugin()
    assert real is not None and real[0].isdigit()
    cache = tmp_path / "cache" / "coreos-lab" / "vagrant-libvirt-plugin.json"
    remembered = json.loads(cache.read_text())
    assert remembered["version"] == real
    # The kept answer is what is read back: Vagrant is not asked (it would answer the real version).
    cache.write_text(json.dumps({**remembered, "version": "0.0-kept"}))
    assert libvirt.vagrant_libvirt_plugin() == "0.0-kept"
    home.mkdir(exist_ok=True)
    (home / "plugins.json").write_text('{"version": "1", "installed": {}}')  # what `vagrant plugin` writes
    assert libvirt.vagrant_libvirt_plugin() == real
