"""The tiny CoreOS-like box: its user-data applier reads rendered user-data exactly as `render` says a guest
does, and the box image it builds is a valid libvirt box (metadata, qcow2 disk with an MBR partition)."""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from harness.boxes import add_box
from harness.cli import lab
from harness.libvirt_box import (
    DISK_BINARIES,
    FLAVOURS,
    GUEST_FILES,
    _kernel,
    _populate_root,
    build_box,
    vagrant_insecure_public_key,
)
from harness.user_data import etcd_environments

from coreos_lab.distros import DISTROS
from coreos_lab.mirror.store import MirrorStore
from coreos_lab.vagrant.qemu_image_box import fw_cfg_argument, ignition_config

BUSYBOX = shutil.which("busybox")


def applier_env(user_data: Path) -> dict[str, str]:
    """Run the box's applier in its print-only mode with the same busybox the guest has."""
    if BUSYBOX is None:
        pytest.fail("busybox (busybox-static) is a test dependency (scripts/system-packages.sh)")
    out = subprocess.run(
        [BUSYBOX, "sh", str(GUEST_FILES / "apply-user-data"), "--env", str(user_data)],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": f"{Path(BUSYBOX).parent}:/usr/bin:/bin"},
    ).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if line)


@pytest.mark.integration
@pytest.mark.parametrize("distro", ["coreos", "flatcar"])
def test_applier_reads_rendered_user_data_like_render_says(tmp_path: Path, mirror_root: Path, distro: str) -> None:
    channel_box = f"{distro}-stable"
    add_box(MirrorStore(mirror_root), channel_box, "1.0.0", provider="libvirt")
    lab_dir = tmp_path / "lab"
    init = lab("init", lab_dir, "--nodes", "3", "--distro", distro, "--provider", "libvirt",
               "--libvirt-driver", "qemu", "--root", mirror_root)  # fmt: skip
    assert init.returncode == 0, init.stderr
    assert lab("render", lab_dir).returncode == 0
    expected = etcd_environments(lab_dir)
    for node, env in expected.items():
        got = applier_env(lab_dir / "user-data" / f"{node}.yaml")
        assert got == env, node
        assert got["ETCD_DISCOVERY"].startswith("http://192.168.121.1:8080/")


def test_applier_substitutes_nothing_it_does_not_know(tmp_path: Path) -> None:
    user_data = tmp_path / "user-data"
    user_data.write_text(
        "#cloud-config\n\ncoreos:\n  etcd2:\n    # comment\n    name: core-01\n"
        "    advertise-client-urls: http://$public_ipv4:2379\n    listen-peer-urls: 'http://$private_ipv4:2380'\n"
        "  fleet:\n    public-ip: $public_ipv4\n  units:\n    - name: etcd2.service\n      command: start\n"
    )
    assert applier_env(user_data) == {
        "ETCD_NAME": "core-01",
        "ETCD_ADVERTISE_CLIENT_URLS": "http://$public_ipv4:2379",
        "ETCD_LISTEN_PEER_URLS": "http://$private_ipv4:2380",
    }


@pytest.mark.integration
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_only_the_coreos_box_has_an_etcd_of_its_own(tmp_path: Path, flavour: str) -> None:
    """Flatcar's etcd comes from its image (tinybox/pull-image); a Flatcar box with an etcd could pass without."""
    _, release = _kernel()
    root = tmp_path / "root"
    _populate_root(root, release, flavour)
    assert (root / "bin/etcdctl").is_symlink() and (root / "bin/pull-image").is_file()
    assert (root / "bin/etcd").is_symlink() == (flavour == "coreos")
    assert {Path(dst).name for dst in DISK_BINARIES[flavour].values()} == (
        {"etcd", "etcdctl"} if flavour == "coreos" else {"etcdctl"}
    )


@pytest.mark.integration
@pytest.mark.libvirt
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_built_box_is_a_libvirt_box(tmp_path: Path, flavour: str) -> None:
    box = build_box(tmp_path / "cache", flavour)
    assert build_box(tmp_path / "cache", flavour) == box  # cached by its inputs
    assert box.name.startswith(f"tinybox-{flavour}-libvirt-")
    with tarfile.open(box) as tar:
        names = tar.getnames()
        meta = json.load(tar.extractfile("metadata.json"))  # type: ignore[arg-type]
        tar.extract("box.img", tmp_path, filter="data")
    assert sorted(names) == ["Vagrantfile", "box.img", "metadata.json"]
    assert meta == {"provider": "libvirt", "format": "qcow2", "virtual_size": 1}
    info = json.loads(
        subprocess.run(["qemu-img", "info", "--output=json", str(tmp_path / "box.img")], capture_output=True,
                       text=True, check=True).stdout
    )  # fmt: skip
    assert info["format"] == "qcow2"
    raw = tmp_path / "disk.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(tmp_path / "box.img"), str(raw)], check=True)
    table = json.loads(subprocess.run(["sfdisk", "-J", str(raw)], capture_output=True, text=True, check=True).stdout)
    (part,) = table["partitiontable"]["partitions"]
    assert (part["start"], part["type"], part.get("bootable")) == (2048, "83", True)


def run_fw_cfg_reader(root: Path) -> None:
    """The flatcar-qemu flavour's boot-time reader, with the guest's busybox, against `root` as its /."""
    if BUSYBOX is None:
        pytest.fail("busybox (busybox-static) is a test dependency (scripts/system-packages.sh)")
    (root / "home/core/.ssh").mkdir(parents=True)
    (root / "run").mkdir()
    subprocess.run(
        [BUSYBOX, "sh", str(GUEST_FILES / "fw-cfg-config")],
        check=True,
        env={"PATH": f"{Path(BUSYBOX).parent}:/usr/bin:/bin", "ROOT": str(root), "CONSOLE": "/dev/null"},
    )


def test_the_fw_cfg_reader_takes_what_the_made_box_passes(tmp_path: Path) -> None:
    """The Ignition config of a box `lab mirror fetch --provider libvirt` makes, as QEMU hands it to the guest
    (`string=` with QEMU's doubled commas undone): core gets Vagrant's key, user-data comes from Flatcar's path."""
    argument = fw_cfg_argument(ignition_config(DISTROS["flatcar"]))
    raw = argument.split(",string=", 1)[1].replace(",,", ",")
    config = tmp_path / "root/sys/firmware/qemu_fw_cfg/by_name/opt/org.flatcar-linux/config/raw"
    config.parent.mkdir(parents=True)
    config.write_text(raw)
    run_fw_cfg_reader(tmp_path / "root")
    assert (tmp_path / "root/home/core/.ssh/authorized_keys").read_text().strip() == (
        vagrant_insecure_public_key().strip()  # the installed Vagrant's own keys/vagrant.pub
    )
    assert (tmp_path / "root/run/user-data-paths").read_text() == "/var/lib/flatcar-vagrant/vagrantfile-user-data\n"


def test_without_a_fw_cfg_config_core_gets_no_key(tmp_path: Path) -> None:
    run_fw_cfg_reader(tmp_path / "root")
    assert not (tmp_path / "root/home/core/.ssh/authorized_keys").exists()
    assert (tmp_path / "root/run/user-data-paths").read_text() == ""
