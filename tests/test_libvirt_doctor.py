"""`lab doctor` for provider: libvirt: the daemon's socket, the vagrant-libvirt plugin, whether KVM runs guests."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness.cli import lab
from harness.libvirt_ns import LibvirtNamespace

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
