"""Host checks for provider: libvirt: the KVM probe boots a real kernel; gateway arithmetic; probes."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from harness.libvirt_ns import LibvirtNamespace

from coreos_lab.vagrant import libvirt
from coreos_lab.vagrant.libvirt import _boot_under_kvm, _guest_kernel, kvm_check, management_gateway


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
    """Whatever KVM does on this machine: a check that test-booted a guest is cached, and the next answer comes
    from the cache; one that could not get that far (no /dev/kvm, or not ours to open) caches nothing."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cache = tmp_path / "coreos-lab" / "kvm-check.json"
    first = kvm_check(use_cache=True, timeout=15)
    booted = os.access("/dev/kvm", os.R_OK | os.W_OK)  # qemu and a kernel are here: the libvirt packages
    assert cache.is_file() == booted, first
    if booted:
        recorded = json.loads(cache.read_text())
        assert (recorded["usable"], recorded["reason"]) == (first.usable, first.reason)
        cache.write_text(json.dumps({**recorded, "reason": "answered from the cache"}))
        assert kvm_check(use_cache=True, timeout=15).reason == "answered from the cache"
        cache.write_text(json.dumps(recorded))
    else:
        assert "/dev/kvm" in first.reason
    second = kvm_check(use_cache=True, timeout=15)
    assert second == first
    assert libvirt.resolve_driver("auto") == ("kvm" if first.usable else "qemu")
    assert libvirt.resolve_driver("qemu") == "qemu"


def test_management_network_is_vagrant_libvirts_without_the_dhcp_ping() -> None:
    import xml.etree.ElementTree as ET

    ns = {"dnsmasq": "http://libvirt.org/schemas/network/dnsmasq/1.0"}
    for subnet, gateway, mask, first, last in [
        ("192.168.121.0/24", "192.168.121.1", "255.255.255.0", "192.168.121.2", "192.168.121.254"),
        ("10.77.0.0/16", "10.77.0.1", "255.255.0.0", "10.77.0.2", "10.77.255.254"),
    ]:
        root = ET.fromstring(libvirt.management_network_xml(subnet))
        assert root.findtext("name") == "vagrant-libvirt"
        assert root.find("forward").get("mode") == "nat"  # type: ignore[union-attr]
        ip = root.find("ip")
        assert ip is not None and (ip.get("address"), ip.get("netmask")) == (gateway, mask)
        dhcp_range = ip.find("dhcp/range")
        assert dhcp_range is not None and (dhcp_range.get("start"), dhcp_range.get("end")) == (first, last)
        options = [o.get("value") for o in root.findall("dnsmasq:options/dnsmasq:option", ns)]
        assert options == ["no-ping"]


@pytest.mark.integration
@pytest.mark.libvirt
def test_management_network_is_created_once_and_removed_only_by_its_uuid(libvirt_ns: LibvirtNamespace) -> None:
    """Against the real libvirtd of the test namespace: the network runs with dnsmasq's no-ping, an existing
    network is left alone, and removal needs the UUID of the network created."""
    libvirt_ns.clean()
    uuid = libvirt.create_management_network("192.168.121.0/24")
    try:
        assert uuid
        assert "vagrant-libvirt" in libvirt_ns.names("net-list", "--name")  # defined and started
        assert "no-ping" in Path("/var/lib/libvirt/dnsmasq/vagrant-libvirt.conf").read_text()
        assert libvirt.create_management_network("192.168.121.0/24") is None  # exists: not ours to touch
        assert libvirt.remove_management_network("00000000-0000-0000-0000-000000000000") is False
        assert "vagrant-libvirt" in libvirt_ns.names("net-list", "--all", "--name")
        assert libvirt.remove_management_network(uuid) is True
        assert "vagrant-libvirt" not in libvirt_ns.names("net-list", "--all", "--name")
    finally:
        libvirt_ns.clean()
