"""Lab directories for lifecycle tests: a lab.yaml whose mirror is a local store on a free loopback port."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import yaml

from coreos_lab.distros import DISTROS
from coreos_lab.mirror.images.reference import parse_reference
from coreos_lab.mirror.store import MirrorStore
from harness.boxes import add_box
from harness.etcd_image import put_in_store, small_image
from harness.ports import free_port

STANDIN = Path(__file__).with_name("standin_vagrant.py")


def make_lab(
    base: Path,
    *,
    nodes: int = 3,
    distro: str = "coreos",
    version: str = "1.0.0",
    with_box: bool = True,
    with_image: bool = True,
    # Inside VirtualBox's default host-only range, and off 172.17.8.0/24 (the namespace harness may hold it).
    subnet: str = "192.168.60.0/24",
) -> tuple[Path, dict[str, str]]:
    """A lab dir with lab.yaml, its mirror store (holding the box unless `with_box` is False, and for a distro
    that runs etcd from an image, a stand-in under the image's name unless `with_image` is False: these labs
    never boot it), a private VAGRANT_HOME, and the environment to run `lab` in it. The mirror URL is a free
    port nothing listens on."""
    lab_dir = base / "lab"
    lab_dir.mkdir()
    root = base / "boxes"
    root.mkdir()
    name = f"{distro}-stable"
    if with_box:
        add_box(MirrorStore(root), name, version)
    etcd_image = DISTROS[distro].etcd_image
    if with_image and etcd_image:
        ref = parse_reference(etcd_image)
        assert ref.tag, "a distro's etcd image is pinned to a tag"
        put_in_store(root, small_image(), ref.repository, ref.tag)
    doc = {
        "distro": distro,
        "channel": "stable",
        "version": version,
        "provider": "virtualbox",
        "nodes": nodes,
        "subnet": subnet,
        "mirror": {"url": f"http://127.0.0.1:{free_port()}", "root": str(root)},
    }
    (lab_dir / "lab.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    env = {"VAGRANT_HOME": str(base / "vagrant.d"), "LAB_MIRROR_ROOT": str(root)}
    return lab_dir, env


def install_standins(base: Path, machines: list[str]) -> dict[str, str]:
    """A bin dir with the stand-in `vagrant` and a `VBoxManage` that reports 7.0, first on PATH."""
    bin_dir = base / "bin"
    bin_dir.mkdir()
    vagrant = bin_dir / "vagrant"
    vagrant.write_text(f"#!{sys.executable}\n" + STANDIN.read_text())
    vboxmanage = bin_dir / "VBoxManage"
    vboxmanage.write_text("#!/bin/sh\necho 7.0.14r161095\n")
    for tool in (vagrant, vboxmanage):
        tool.chmod(tool.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "STANDIN_MACHINES": ",".join(machines),
        "STANDIN_CALLS": str(base / "calls.jsonl"),
    }
