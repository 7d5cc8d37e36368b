"""End to end on real VMs: a Flatcar lab from a libvirt box that `lab mirror fetch --provider libvirt` made out of a
QEMU image, as it does from Flatcar's `flatcar_production_qemu_image.img`.

The image is the tiny box's `flatcar-qemu` disk (tests/harness/libvirt_box.py), which keeps the contract of
Flatcar's QEMU image: no key of its own; at boot it reads the Ignition config from QEMU's fw_cfg, gives core the
key it carries and applies the user-data its path unit names. It is published like a release (version.txt, the
image, its DIGESTS and signatures) on a fixture server and fetched from there; the box's Vagrantfile (made by
`lab`) is all that passes the config. Flatcar's etcd comes from the etcd image the mirror serves, discovery from
the local discovery service. An image without the fw_cfg reader takes no key: `lab up` must stop early and name
the box instead of waiting out Vagrant's SSH timeout.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from harness.cli import lab
from harness.etcd_image import etcd_image, oci_layout_tar
from harness.libvirt_box import build_image
from harness.libvirt_lab import Lab
from harness.libvirt_ns import LibvirtNamespace
from harness.ports import free_port
from harness.upstream import ReleaseUpstream, SigningKeys, keys, upstream

from coreos_lab.errors import ExitCode
from coreos_lab.vagrant.qemu_image_box import FW_CFG_NAME, VAGRANT_INSECURE_PUBLIC_KEY

__all__ = ["keys", "upstream"]  # the fixtures, imported for this module's tests

pytestmark = [
    pytest.mark.integration,
    pytest.mark.vagrant,
    pytest.mark.etcd,
    pytest.mark.netns,
    pytest.mark.libvirt,
    pytest.mark.timeout(2400),
]

NODES = ("core-01", "core-02", "core-03")


def fetch_made_box(lab_: Lab, up: ReleaseUpstream, keyring: Path, flavour: str, version: str) -> None:
    """Publish the tiny QEMU image of `flavour` as Flatcar release `version`, then fetch it as a libvirt box (on the
    host, where the fixture release server listens; into the mirror the namespace's `lab` uses)."""
    up.publish_qemu_image("flatcar", "stable", version, build_image(flavour=flavour).read_bytes())
    fetched = lab(
        "mirror", "fetch", "--distro", "flatcar", "--provider", "libvirt", "--version", version,
        "--upstream", up.url, "--keyring", keyring, "--json", env=lab_.env,
    )  # fmt: skip
    assert fetched.returncode == 0, fetched.stderr
    assert fetched.json()["box"]["provider"] == "libvirt"


def import_etcd_image(lab_: Lab, tmp_path: Path) -> None:
    img = etcd_image()
    archive = oci_layout_tar(tmp_path / "etcd-v3.5.16.tar", img.manifest, list(img.blobs[1:]), "v3.5.16")
    lab_.ok("mirror", "image", "import", archive, "--name", "coreos/etcd:v3.5.16")


def test_a_flatcar_lab_from_the_box_made_of_the_qemu_image(
    tmp_path: Path, libvirt_ns: LibvirtNamespace, upstream: ReleaseUpstream, keys: SigningKeys
) -> None:
    lab_ = Lab(libvirt_ns, tmp_path)
    fetch_made_box(lab_, upstream, keys.keyring, "flatcar-qemu", "1.0.0")
    import_etcd_image(lab_, tmp_path)
    port = free_port()
    try:
        lab_.ok(
            "init", lab_.dir, "--nodes", "3", "--distro", "flatcar", "--provider", "libvirt", "--version", "1.0.0",
            "--libvirt-driver", "auto", "--mirror-url", f"http://127.0.0.1:{port}", "--memory", "512",
        )  # fmt: skip
        up = lab_.ok("up", lab_.dir, "--json", timeout=1800).json()
        assert sorted(up["started"]) == list(NODES)
        assert up["health"]["healthy"] is True and up["health"]["distro"] == "flatcar"
        # The key came through fw_cfg: the image has none of its own, and the guest shows the config it read.
        config = lab_.ok(
            "ssh", lab_.dir, "core-02", "--", "cat", f"/sys/firmware/qemu_fw_cfg/by_name/{FW_CFG_NAME}/raw"
        )
        assert VAGRANT_INSECURE_PUBLIC_KEY in config.stdout
        # etcd formed through the local discovery service, on the token this lab minted.
        token = lab_.state()["token"]["token"]
        assert f"http://192.168.121.1:{port}/{token}" in (lab_.dir / "user-data" / "core-01.yaml").read_text()
        assert sorted(name for _, name in lab_.members()) == list(NODES)
        lab_.ok("destroy", lab_.dir, "--force")
        assert libvirt_ns.leftovers() == {"domains": [], "volumes": [], "networks": []}
    finally:
        if (lab_.dir / ".vagrant").exists():
            lab_("destroy", lab_.dir, "--force", timeout=600)
        libvirt_ns.clean()


def test_an_image_without_the_fw_cfg_contract_fails_lab_up_naming_the_box(
    tmp_path: Path, libvirt_ns: LibvirtNamespace, upstream: ReleaseUpstream, keys: SigningKeys
) -> None:
    lab_ = Lab(libvirt_ns, tmp_path)
    fetch_made_box(lab_, upstream, keys.keyring, "flatcar-qemu-no-fw-cfg", "2.0.0")
    import_etcd_image(lab_, tmp_path)
    try:
        lab_.ok(
            "init", lab_.dir, "--nodes", "1", "--distro", "flatcar", "--provider", "libvirt", "--version", "2.0.0",
            "--libvirt-driver", "auto", "--mirror-url", f"http://127.0.0.1:{free_port()}", "--memory", "512",
        )  # fmt: skip
        run = lab_("up", lab_.dir, timeout=1200)
        assert run.returncode == ExitCode.ERROR, run.stderr
        assert "box flatcar-stable 2.0.0 (libvirt): core-01's SSH server refuses Vagrant's insecure key" in run.stderr
        assert FW_CFG_NAME in run.stderr
        log = (lab_.dir / ".lab" / "logs" / "up-core-01.log").read_text()
        assert 3 <= log.count("Authentication failure") < 10  # stopped at the third report, not at the boot timeout
    finally:
        if (lab_.dir / ".vagrant").exists():
            lab_("destroy", lab_.dir, "--force", timeout=600)
        libvirt_ns.clean()
