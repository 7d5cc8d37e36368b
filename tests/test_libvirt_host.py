"""Host checks for provider: libvirt: the KVM probe boots a real kernel; gateway arithmetic; probes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from coreos_lab import libvirt
from coreos_lab.libvirt import _boot_under_kvm, _guest_kernel, kvm_check, management_gateway


def test_management_gateway_is_the_first_host_address() -> None:
    assert management_gateway() == "192.168.121.1"
    assert management_gateway("10.77.0.0/24") == "10.77.0.1"
    with pytest.raises(ValueError, match="not a network"):
        management_gateway("10.77.0.300/24")


def _qemu_and_kernel() -> tuple[str, Path]:
    qemu, kernel = shutil.which(libvirt.QEMU), _guest_kernel()
    if qemu is None or kernel is None:
        pytest.fail("qemu-system-x86 and a kernel in /boot are test dependencies (scripts/system-packages.sh)")
    return qemu, kernel


@pytest.mark.integration
@pytest.mark.libvirt
def test_probe_sees_a_kernel_boot_when_the_accelerator_runs_guests() -> None:
    """The probe's positive path, with software emulation standing in for a KVM that works."""
    qemu, kernel = _qemu_and_kernel()
    result = _boot_under_kvm(qemu, kernel, timeout=120, accel="tcg")
    assert result.usable, result.reason


@pytest.mark.integration
@pytest.mark.libvirt
def test_probe_reports_why_qemu_could_not_start(tmp_path: Path) -> None:
    qemu, _ = _qemu_and_kernel()
    missing = tmp_path / "vmlinuz-none"
    result = _boot_under_kvm(qemu, missing, timeout=30, accel="tcg")
    assert not result.usable
    assert "QEMU could not run a KVM guest" in result.reason and "vmlinuz-none" in result.reason


@pytest.mark.integration
@pytest.mark.libvirt
def test_kvm_check_is_cached_per_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever KVM does on this machine, the second answer comes from the cache and matches the first."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = kvm_check(use_cache=True, timeout=15)
    assert (tmp_path / "coreos-lab" / "kvm-check.json").is_file() or not Path("/dev/kvm").exists()
    second = kvm_check(use_cache=True, timeout=15)
    assert second == first
    assert libvirt.resolve_driver("auto") == ("kvm" if first.usable else "qemu")
    assert libvirt.resolve_driver("qemu") == "qemu"
