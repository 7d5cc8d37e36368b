"""End to end on real VMs: `lab` brings a 3-node CoreOS-like cluster up with vagrant-libvirt under QEMU.

Everything runs inside a network namespace the session creates (tests/harness/libvirt_ns.py): libvirtd,
its bridges and dnsmasq, the VMs and their networks, and `lab` itself with its embedded mirror + discovery
server. The box is the tiny CoreOS-like box built offline from Debian packages (tests/harness/libvirt_box.py),
imported into the mirror and added by `lab up` through it, exactly as a real box.

The end-to-end lab is a CoreOS one (the default distro: `coreos.etcd2` user-data, etcd v2 API); the box runs
real etcd 3.4 but has no fleet, so `lab up` waits for the etcd checks (`--check etcd --check members`). The
smoke test below uses a Flatcar lab (etcd-member drop-in, v3 API) on the box's Flatcar flavour, which has no
etcd of its own: each machine pulls etcd's image (built by the test from Debian's etcd, imported with `lab
mirror image import`) from the registry of the mirror `lab` serves, as ETCD_IMAGE and the docker.service
drop-in say, and runs etcd from it. So both distros' paths run for real, Flatcar's offline image included.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from harness.etcd_image import etcd_image, oci_layout_tar
from harness.libvirt_lab import Lab
from harness.libvirt_ns import LibvirtNamespace
from harness.ports import free_port

from coreos_lab.errors import ExitCode

pytestmark = [
    pytest.mark.integration,
    pytest.mark.vagrant,
    pytest.mark.etcd,
    pytest.mark.netns,
    pytest.mark.libvirt,
    pytest.mark.timeout(2400),
]

NODES = ("core-01", "core-02", "core-03")


ETCD_CHECKS = ("--check", "etcd", "--check", "members")  # no fleet on the tiny box


def test_lab_up_health_halt_up_destroy(tmp_path: Path, libvirt_ns: LibvirtNamespace, tiny_box: Path) -> None:
    lab_ = Lab(libvirt_ns, tmp_path)
    port = free_port()
    lab_.ok("mirror", "import", tiny_box, "--name", "coreos-stable", "--version", "1.0.0", "--provider", "libvirt")
    try:
        lab_.ok(
            "init", lab_.dir, "--nodes", "3", "--distro", "coreos", "--provider", "libvirt", "--libvirt-driver", "auto",
            "--mirror-url", f"http://127.0.0.1:{port}", "--memory", "512",
        )  # fmt: skip
        up = lab_.ok("up", lab_.dir, *ETCD_CHECKS, "--json").json()
        assert up["server"] == "embedded"
        assert sorted(up["started"]) == list(NODES)
        assert up["health"]["healthy"] is True and up["health"]["distro"] == "coreos"
        token = lab_.state()["token"]["token"]
        user_data = (lab_.dir / "user-data" / "core-01.yaml").read_text()
        assert f"http://192.168.121.1:{port}/{token}" in user_data  # guests reach the host at the gateway

        # --wait: on a loaded host an emulated guest's etcd can miss one probe's timeout right after up; a slow
        # machine must make this slower, never red (seen beside stress --cpu 2: one member "unhealthy" once).
        health = lab_.ok("health", lab_.dir, "--check", "etcd", "--json", "--wait", "600").json()
        assert health["healthy"] is True, health
        members = lab_.members()
        assert sorted(name for _, name in members) == list(NODES)

        lab_.ok("halt", lab_.dir)
        domains = libvirt_ns.names("list", "--all", "--name")
        assert len(domains) == 3
        assert all("shut off" in libvirt_ns.virsh("domstate", d).stdout for d in domains)

        again = lab_.ok("up", lab_.dir, *ETCD_CHECKS, "--json").json()
        assert sorted(again["started"]) == list(NODES)
        assert lab_.state()["token"]["token"] == token  # same cluster, same token: etcd keeps its data
        assert lab_.members() == members  # the same three members, not re-registered ones

        lab_.ok("destroy", lab_.dir, "--force")
        assert libvirt_ns.leftovers() == {"domains": [], "volumes": [], "networks": []}
        assert libvirt_ns.qemu_processes() == []
        state = lab_.state()
        assert token in state["used_tokens"]  # never rendered again
        rerender = lab_.ok("render", lab_.dir, "--json").json()
        assert token not in json.dumps(rerender)
    finally:
        if (lab_.dir / ".vagrant").exists():
            lab_("destroy", lab_.dir, "--force", timeout=600)
        libvirt_ns.clean()


@pytest.fixture(scope="session")
def tiny_flatcar_box() -> Path:
    """The tiny box's Flatcar flavour: etcdctl on the host, no etcd (tests/harness/libvirt_box.py)."""
    from harness.libvirt_box import build_box

    return build_box(flavour="flatcar")


def test_lab_smoke_on_libvirt_writes_junit(
    tmp_path: Path, libvirt_ns: LibvirtNamespace, tiny_flatcar_box: Path
) -> None:
    """`lab smoke --provider libvirt`: a throw-away Flatcar lab up, proven, torn down, reported as JUnit; healthy
    only if every machine got etcd's image through the mirror."""
    lab_ = Lab(libvirt_ns, tmp_path)
    lab_.ok("mirror", "import", tiny_flatcar_box, "--name", "flatcar-stable", "--version", "1.0.0",
            "--provider", "libvirt")  # fmt: skip
    smoke = ("smoke", "--nodes", "3", "--distro", "flatcar", "--provider", "libvirt")
    refused = tmp_path / "reports" / "without-image.xml"  # preflight: nothing is created without the image
    without = lab_(*smoke, "--junit", refused)
    assert without.returncode == ExitCode.MISSING_TOOL, without.stderr
    assert "etcd image quay.io/coreos/etcd:v3.5.16 (as coreos/etcd:v3.5.16) is not in the mirror" in without.stderr
    assert "hint: lab mirror image fetch quay.io/coreos/etcd:v3.5.16" in refused.read_text()
    img = etcd_image()
    archive = oci_layout_tar(tmp_path / "etcd-v3.5.16.tar", img.manifest, list(img.blobs[1:]), "v3.5.16")
    lab_.ok("mirror", "image", "import", archive, "--name", "coreos/etcd:v3.5.16")
    junit = tmp_path / "reports" / "smoke.xml"
    try:
        lab_.ok(*smoke, "--junit", junit, timeout=1200)
        text = junit.read_text()
        assert "<testsuite" in text and 'failures="0"' in text and 'errors="0"' in text
        assert libvirt_ns.leftovers() == {"domains": [], "volumes": [], "networks": []}
    finally:
        libvirt_ns.clean()
