"""The real Vagrant CLI (Debian's 2.3.4) adding a Vagrant Cloud-style `org/name` box from `lab mirror serve`.

No VirtualBox is needed: `vagrant box add` only downloads, checks and unpacks the (tiny, valid) boxes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.boxes import make_box
from harness.mirror import MirrorProcess, mirror_server
from harness.vagrant_cli import installed_boxes, vagrant

from coreos_lab.mirror.store import BoxKey, MirrorStore

pytestmark = [pytest.mark.integration, pytest.mark.vagrant]

NAME = "bento/debian-12"
VERSION = "202511.01.0"


def add(store: MirrorStore, key: BoxKey, data: bytes) -> None:
    part = store.part_path(key)
    part.parent.mkdir(parents=True, exist_ok=True)
    part.write_bytes(data)
    store.commit(key, part, sha256=hashlib.sha256(data).hexdigest(), source="test")


@pytest.fixture
def vagrant_home(tmp_path: Path) -> Path:
    home = tmp_path / "vagrant-home"
    home.mkdir()
    return home


@pytest.fixture
def server(mirror_root: Path) -> Iterator[MirrorProcess]:
    """One version of bento/debian-12 for VirtualBox in two architectures (arm64 first) and for libvirt."""
    store = MirrorStore(mirror_root)
    add(store, BoxKey(NAME, VERSION, "virtualbox", "arm64"), make_box(NAME, VERSION, "virtualbox", padding=64))
    add(store, BoxKey(NAME, VERSION, "virtualbox", "amd64"), make_box(NAME, VERSION, "virtualbox"))
    add(store, BoxKey(NAME, VERSION, "libvirt", "amd64"), make_box(NAME, VERSION, "libvirt"))
    with mirror_server(mirror_root) as srv:
        yield srv


def disk_size(home: Path) -> int:
    (disk,) = (home / "boxes").glob("bento-VAGRANTSLASH-debian-12/*/virtualbox/box-disk1.vmdk")
    return disk.stat().st_size


def test_box_add_of_an_org_box_gets_the_default_architecture(server: MirrorProcess, vagrant_home: Path) -> None:
    """Vagrant 2.3 ignores `architecture`: of a provider's entries it keeps the last, which the mirror makes the
    default architecture's."""
    run = vagrant(vagrant_home, "box", "add", "--provider", "virtualbox", f"{server.url}/{NAME}")
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"Successfully added box '{NAME}' (v{VERSION}) for 'virtualbox'" in run.stdout
    assert installed_boxes(vagrant_home) == [(NAME, VERSION)]
    assert server.access_lines(f"/{NAME}/{VERSION}/virtualbox-amd64.box")
    assert disk_size(vagrant_home) == len(f"{NAME}-{VERSION}")  # the amd64 box's disk, not arm64's padded one


def test_box_add_with_the_box_name_and_box_url_of_a_vagrantfile(server: MirrorProcess, vagrant_home: Path) -> None:
    """`config.vm.box = "bento/debian-12"` with `config.vm.box_url = "<mirror>/bento/debian-12.json"` is this add:
    Vagrant checks the name against the metadata's."""
    url = f"{server.url}/{NAME}.json"
    run = vagrant(vagrant_home, "box", "add", "--name", NAME, "--provider", "libvirt", url)
    assert run.returncode == 0, run.stdout + run.stderr
    assert installed_boxes(vagrant_home) == [(NAME, VERSION)]
    assert server.access_lines(f"/{NAME}/{VERSION}/libvirt-amd64.box")


def test_box_add_by_name_from_the_mirror_as_vagrant_server_url(
    server: MirrorProcess, vagrant_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`vagrant box add org/name` asks VAGRANT_SERVER_URL for `/<org>/<name>`, as it asked Vagrant Cloud."""
    monkeypatch.setenv("VAGRANT_SERVER_URL", server.url)
    run = vagrant(vagrant_home, "box", "add", "--provider", "virtualbox", NAME)
    assert run.returncode == 0, run.stdout + run.stderr
    assert installed_boxes(vagrant_home) == [(NAME, VERSION)]
    assert server.access_lines(f"/{NAME}")
