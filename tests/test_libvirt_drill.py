"""Failure drills on real VMs: a 3-node CoreOS-like lab on vagrant-libvirt under QEMU (the end-to-end setup of
tests/test_libvirt_e2e.py: libvirtd, the VMs and `lab` inside a network namespace, the tiny box).

One lab, brought up once (VMs under emulation are slow to boot), then: a halted machine in `lab health`; the quorum
drill; a partition by the provider's link control (`virsh domif-setlink`) and its heal. The box has no systemd: its
`systemctl` stops and starts the etcd it runs (tests/harness/tinybox/systemctl), which is what the drills ask of it.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from harness.libvirt_lab import Lab
from harness.libvirt_ns import LibvirtNamespace
from harness.ports import free_port
from test_libvirt_e2e import ETCD_CHECKS

from coreos_lab.errors import ExitCode

pytestmark = [
    pytest.mark.integration,
    pytest.mark.vagrant,
    pytest.mark.etcd,
    pytest.mark.netns,
    pytest.mark.libvirt,
    pytest.mark.timeout(3600),
]


def test_drills_on_three_vms(tmp_path: Path, libvirt_ns: LibvirtNamespace, tiny_box: Path) -> None:
    lab_ = Lab(libvirt_ns, tmp_path)
    lab_.ok("mirror", "import", tiny_box, "--name", "coreos-stable", "--version", "1.0.0", "--provider", "libvirt")
    try:
        lab_.ok(
            "init", lab_.dir, "--nodes", "3", "--distro", "coreos", "--provider", "libvirt", "--libvirt-driver", "auto",
            "--mirror-url", f"http://127.0.0.1:{free_port()}", "--memory", "512",
        )  # fmt: skip
        lab_.ok("up", lab_.dir, *ETCD_CHECKS)

        # One machine of three halted: reported with its state, the other two checked; exit 3, JSON on stdout.
        lab_.ok("halt", lab_.dir, "core-03")
        halted = lab_("health", lab_.dir, *ETCD_CHECKS, "--json")
        assert halted.returncode == ExitCode.UNHEALTHY, halted.stderr
        report = halted.json()
        assert report["nodes"]["core-03"]["machine"] == "shutoff"
        assert report["nodes"]["core-03"]["checks"]["etcd"]["detail"] == "not asked: the machine is shutoff"
        assert report["etcd_cluster"] == "degraded"
        for name in ("core-01", "core-02"):
            assert report["nodes"][name]["etcd_cluster"] == "degraded"
            assert report["nodes"][name]["checks"]["members"]["status"] == "pass"  # still a leader
        lab_.ok("drill", "start", lab_.dir, "core-03")
        lab_.ok("health", lab_.dir, *ETCD_CHECKS, "--wait", "600")

        # The quorum drill: every step as etcd promises, every fault undone.
        junit = tmp_path / "quorum.xml"
        quorum = lab_.ok("drill", "quorum", lab_.dir, "--timeout", "300", "--junit", junit, "--json", timeout=2400)
        assert quorum.json()["passed"] is True
        suite = ET.parse(junit).getroot().find("testsuite")
        assert suite is not None and suite.get("tests") == "7" and suite.get("failures") == "0"
        lab_.ok("health", lab_.dir, *ETCD_CHECKS, "--wait", "600")

        # core-03 cut off by its private NIC's link: its own etcd finds no quorum, core-01 and core-02 carry on.
        cut = lab_.ok("drill", "partition", lab_.dir, "core-03", "--json").json()
        assert "virsh domif-setlink" in cut["actions"][0]
        partitioned = lab_("health", lab_.dir, "--check", "etcd", "--json")
        assert partitioned.returncode == ExitCode.UNHEALTHY, partitioned.stderr
        nodes = partitioned.json()["nodes"]
        assert nodes["core-03"]["checks"]["etcd"]["status"] == "fail"  # reached over SSH, on the management network
        assert nodes["core-03"]["etcd_cluster"] == "unavailable"
        for name in ("core-01", "core-02"):
            detail = nodes[name]["checks"]["etcd"]["detail"]
            assert detail.startswith("cluster is degraded: 2 of 3 healthy; not healthy: http://172.17.8.103:2379")
        lab_.ok("drill", "heal", lab_.dir)
        healed = lab_.ok("health", lab_.dir, *ETCD_CHECKS, "--wait", "600", "--json").json()
        assert healed["healthy"] is True and healed["etcd_cluster"] == "healthy"
    finally:
        if (lab_.dir / ".vagrant").exists():
            lab_("destroy", lab_.dir, "--force", timeout=600)
        libvirt_ns.clean()
