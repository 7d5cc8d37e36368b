"""The Vagrant adapter against the real Vagrant CLI (Debian's 2.3.4); VirtualBox's absence is a PATH without it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from harness.boxes import write_box
from harness.tool_path import VIRTUALBOX_TOOLS, path_without

from coreos_lab.errors import ToolMissing
from coreos_lab.vagrant.adapter import Vagrant

pytestmark = [pytest.mark.integration, pytest.mark.vagrant]

FIXTURES = Path(__file__).parent / "fixtures" / "vagrant"


@pytest.fixture
def lab_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("VAGRANT_HOME", str(tmp_path / "vagrant.d"))
    directory = tmp_path / "lab"
    directory.mkdir()
    shutil.copy(FIXTURES / "Vagrantfile", directory / "Vagrantfile")
    return directory


def test_version(lab_dir: Path) -> None:
    assert Vagrant(lab_dir).version().startswith("2.")


def test_status_with_virtualbox_missing_is_tool_missing_and_logged(
    lab_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", path_without(tmp_path / "bin", *VIRTUALBOX_TOOLS))  # holds where VirtualBox is
    vagrant = Vagrant(lab_dir, provider="virtualbox")
    with pytest.raises(ToolMissing) as caught:
        vagrant.status()
    assert "provider virtualbox" in caught.value.message
    assert "Vagrant could not detect VirtualBox!" in caught.value.message
    log = (lab_dir / ".lab" / "logs" / "status.log").read_text()
    assert "vagrant status --machine-readable" in log
    assert "Vagrant could not detect VirtualBox! Make sure VirtualBox is properly installed." in log  # decoded
    assert "VAGRANT_COMMA" not in log
    assert log.rstrip().endswith("== exit 1")


def test_env_completes_the_environment(lab_dir: Path, tmp_path: Path) -> None:
    """VAGRANT_HOME from the caller's environment is kept (python-vagrant's env= would drop it)."""
    Vagrant(lab_dir).box_list()
    assert (tmp_path / "vagrant.d").is_dir()


def test_box_add_and_list(lab_dir: Path, tmp_path: Path) -> None:
    box = tmp_path / "coreos.box"
    write_box(box)
    vagrant = Vagrant(lab_dir, provider="virtualbox")
    assert not vagrant.has_box("coreos-stable", None, "virtualbox")
    # A plain box file has no version; metadata URLs (with --box-version) are covered with the mirror server.
    vagrant.box_add(str(box), version=None, provider="virtualbox", name="coreos-stable")
    assert vagrant.has_box("coreos-stable", "0", "virtualbox")
    assert not vagrant.has_box("coreos-stable", "1.0.0", "virtualbox")
    assert "Successfully added box 'coreos-stable'" in (lab_dir / ".lab" / "logs" / "box.log").read_text()


def test_box_add_pinned_version_from_the_mirror(lab_dir: Path, tmp_path: Path) -> None:
    """The box is added the way `lab up` adds it: box metadata from the real mirror server, version pinned."""
    from harness.boxes import add_box

    from coreos_lab.mirror.store import MirrorStore, metadata_url
    from coreos_lab.server import EmbeddedServer

    store = MirrorStore(tmp_path / "boxes")
    add_box(store, "coreos-stable", "1.0.0")
    add_box(store, "coreos-stable", "2.0.0")
    vagrant = Vagrant(lab_dir, provider="virtualbox")
    progress: list[str] = []
    with EmbeddedServer(store.root, port=0) as server:
        vagrant.box_add(
            metadata_url("coreos-stable", server.url),
            version="1.0.0",
            provider="virtualbox",
            on_progress=lambda machine, line: progress.append(line),
        )
    assert vagrant.has_box("coreos-stable", "1.0.0", "virtualbox")
    assert not vagrant.has_box("coreos-stable", "2.0.0", "virtualbox")
    assert any("Successfully added box 'coreos-stable' (v1.0.0)" in line for line in progress)


def test_box_directory_agrees_with_vagrant_box_list(lab_dir: Path, tmp_path: Path) -> None:
    """`has_box` reads Vagrant's box directory before it asks `vagrant box list`: both must give the same answer for
    boxes the real Vagrant added (a `/` in the name included), and a box missing there is still asked about."""
    from coreos_lab.vagrant.adapter import box_on_disk

    box = tmp_path / "coreos.box"
    write_box(box)
    vagrant = Vagrant(lab_dir, provider="virtualbox")
    home = tmp_path / "vagrant.d"
    assert vagrant.home() == home
    assert not box_on_disk(home, "lab/coreos-stable", None, "virtualbox")
    vagrant.box_add(str(box), version=None, provider="virtualbox", name="lab/coreos-stable")
    listed = {(b.name, b.version, b.provider) for b in vagrant.box_list()}
    assert listed == {("lab/coreos-stable", "0", "virtualbox")}
    assert box_on_disk(home, "lab/coreos-stable", "0", "virtualbox")
    assert box_on_disk(home, "lab/coreos-stable", None, "virtualbox")
    assert not box_on_disk(home, "lab/coreos-stable", "1.0.0", "virtualbox")
    assert not box_on_disk(home, "lab/coreos-stable", "0", "libvirt")
    assert not box_on_disk(home, "coreos-stable", None, "virtualbox")
