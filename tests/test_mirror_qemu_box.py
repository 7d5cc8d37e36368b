"""`lab mirror fetch --distro flatcar --provider libvirt`: Flatcar's QEMU image, fetched from a fixture release server
on 127.0.0.1 (real HTTP, real gpg) and made into a Vagrant libvirt box. The images are real qcow2 files that
qemu-img makes; Vagrant itself adds the box."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
from harness.cli import lab
from harness.upstream import ReleaseUpstream, SigningKeys, keys, upstream

from coreos_lab.errors import ExitCode
from coreos_lab.mirror.store import BoxKey, MirrorStore
from coreos_lab.vagrant.qemu_image_box import (
    VAGRANT_INSECURE_PUBLIC_KEY,
    ignition_from_fw_cfg_argument,
)

__all__ = ["keys", "upstream"]  # the fixtures, imported for this module's tests

pytestmark = pytest.mark.integration

IMAGE = "flatcar_production_qemu_image.img"


def qcow2_image(tmp_path: Path, size: str = "64M", tag: str = "") -> bytes:
    """A real (empty) qcow2 disk image of `size`; `tag` in its backing-file-free header padding makes it unique."""
    path = tmp_path / f"image-{size}-{tag}.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), size], check=True)
    return path.read_bytes() + tag.encode()  # bytes after the last cluster: qemu ignores them


def fetch(root: Path, up: ReleaseUpstream, *args: str | os.PathLike[str]):  # type: ignore[no-untyped-def]
    return lab(
        "mirror", "fetch", "--root", root, "--upstream", up.url, "--distro", "flatcar", "--provider", "libvirt",
        "--json", *args,
    )  # fmt: skip


def box_members(box: Path) -> dict[str, bytes]:
    with tarfile.open(box) as archive:
        return {m.name: archive.extractfile(m).read() for m in archive.getmembers() if m.isfile()}  # type: ignore[union-attr]


def fw_cfg_argument(vagrantfile: str) -> str:
    """The Ruby single-quoted literal the box's Vagrantfile passes to `-fw_cfg`, read back."""
    line = next(line for line in vagrantfile.splitlines() if line.startswith("IGNITION_FW_CFG = '"))
    return line.removeprefix("IGNITION_FW_CFG = '").removesuffix("'").replace("\\'", "'").replace("\\\\", "\\")


def test_the_qemu_image_becomes_a_libvirt_box(
    mirror_root: Path, upstream: ReleaseUpstream, keys: SigningKeys, tmp_path: Path
) -> None:
    image = qcow2_image(tmp_path, "3G", "3815.2.0")
    upstream.publish_qemu_image("flatcar", "stable", "3760.2.0", qcow2_image(tmp_path, tag="old"), current=False)
    upstream.publish_qemu_image("flatcar", "stable", "3815.2.0", image)
    run = fetch(mirror_root, upstream, "--keyring", keys.keyring)
    assert run.returncode == 0, run.stderr
    doc = run.json()
    assert doc["action"] == "added"
    assert doc["upstream"]["box_url"] == f"{upstream.url}/stable/amd64-usr/3815.2.0/{IMAGE}"
    assert doc["signatures_verified"] == [f"{IMAGE}.DIGESTS.asc", f"{IMAGE}.sig"]
    store = MirrorStore(mirror_root)
    (entry,) = store.entries()
    assert entry.key == BoxKey("flatcar-stable", "3815.2.0", "libvirt", "amd64")
    members = box_members(store.artifact_path(entry.key))
    assert sorted(members) == ["Vagrantfile", "box.img", "metadata.json"]
    assert members["box.img"] == image
    meta = json.loads(members["metadata.json"])
    assert meta == {"provider": "libvirt", "format": "qcow2", "virtual_size": 3, "architecture": "amd64"}
    vagrantfile = members["Vagrantfile"].decode()
    assert 'libvirt.qemuargs value: "-fw_cfg"' in vagrantfile
    ignition = ignition_from_fw_cfg_argument(fw_cfg_argument(vagrantfile))
    assert ignition["passwd"]["users"] == [{"name": "core", "sshAuthorizedKeys": [VAGRANT_INSECURE_PUBLIC_KEY]}]
    (unit,) = ignition["systemd"]["units"]
    assert "PathExists=/var/lib/flatcar-vagrant/vagrantfile-user-data\n" in unit["contents"]
    assert "Unit=user-cloudinit@var-lib-flatcar\\x2dvagrant-vagrantfile\\x2duser\\x2ddata.service" in unit["contents"]
    kept = sorted(p.name for p in store.upstream_dir("flatcar-stable", "3815.2.0").iterdir())
    assert kept == [f"{IMAGE}.DIGESTS", f"{IMAGE}.DIGESTS.asc", f"{IMAGE}.sig"]
    listed = lab("mirror", "list", "--root", mirror_root, "--json", "--base-url", "http://192.168.121.1:8080").json()
    (row,) = listed["boxes"]
    assert (row["name"], row["provider"]) == ("flatcar-stable", "libvirt")
    assert row["box_url"] == "http://192.168.121.1:8080/flatcar-stable/3815.2.0/libvirt-amd64.box"
    assert lab("mirror", "verify", "--root", mirror_root).returncode == 0
    again = fetch(mirror_root, upstream, "--version", "3815.2.0")
    assert again.returncode == 0 and again.json()["action"] == "unchanged", again.stderr


@pytest.mark.vagrant
def test_vagrant_adds_the_made_box(mirror_root: Path, upstream: ReleaseUpstream, tmp_path: Path) -> None:
    """Vagrant (with vagrant-libvirt) unpacks the box, reads its metadata and loads its Vagrantfile."""
    upstream.publish_qemu_image("flatcar", "stable", "3815.2.0", qcow2_image(tmp_path))
    assert fetch(mirror_root, upstream).returncode == 0
    (entry,) = MirrorStore(mirror_root).entries()
    env = {**os.environ, "VAGRANT_HOME": str(tmp_path / "vagrant.d"), "VAGRANT_CHECKPOINT_DISABLE": "1"}
    box = MirrorStore(mirror_root).artifact_path(entry.key)
    add = subprocess.run(
        ["vagrant", "box", "add", "--name", "flatcar-stable", str(box)], env=env, capture_output=True, text=True
    )
    assert add.returncode == 0, add.stdout + add.stderr
    listed = subprocess.run(["vagrant", "box", "list"], env=env, capture_output=True, text=True, check=True).stdout
    assert "flatcar-stable" in listed and "libvirt" in listed
    project = tmp_path / "project"
    project.mkdir()
    (project / "Vagrantfile").write_text('Vagrant.configure("2") { |c| c.vm.box = "flatcar-stable" }\n')
    ssh = subprocess.run(
        ["vagrant", "validate"], cwd=project, env=env | {"VAGRANT_DEFAULT_PROVIDER": "libvirt"}, capture_output=True,
        text=True,
    )  # fmt: skip
    assert ssh.returncode == 0, ssh.stdout + ssh.stderr


def test_a_cut_image_download_is_never_listed_and_resumes(
    mirror_root: Path, upstream: ReleaseUpstream, tmp_path: Path
) -> None:
    image = qcow2_image(tmp_path)
    release = upstream.publish_qemu_image("flatcar", "stable", "3815.2.0", image)
    upstream.release.cut_after[release.box_path] = len(image) // 2
    cut = fetch(mirror_root, upstream)
    assert cut.returncode == ExitCode.ERROR and "was cut" in cut.stderr, cut.stderr
    store = MirrorStore(mirror_root)
    assert store.entries() == []
    assert lab("mirror", "list", "--root", mirror_root, "--json").json()["boxes"] == []
    assert len(store.part_paths()) == 1  # the image so far, in the box's part
    resumed = fetch(mirror_root, upstream)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.json()["resumed_from"] == len(image) // 2
    assert upstream.release.seen(release.box_path)[-1].headers["Range"] == f"bytes={len(image) // 2}-"
    (entry,) = store.entries()
    assert box_members(store.artifact_path(entry.key))["box.img"] == image
    assert store.part_paths() == []


@pytest.mark.parametrize("damage", ["tampered", "truncated", "not-qcow2"])
def test_a_bad_image_is_refused_and_the_store_is_unchanged(
    mirror_root: Path, upstream: ReleaseUpstream, tmp_path: Path, damage: str
) -> None:
    """The DIGESTS describe the published image; the server then serves other bytes (or a complete-looking but
    short file, or a file that is no qcow2 image at all, with DIGESTS to match)."""
    image = qcow2_image(tmp_path)
    if damage == "not-qcow2":
        image = b"\x00" * 4096
    release = upstream.publish_qemu_image("flatcar", "stable", "3815.2.0", image)
    served = {"tampered": image[:-1] + b"X", "truncated": image[: len(image) // 2], "not-qcow2": image}[damage]
    for path in (release.box_path, release.box_path.replace("/3815.2.0/", "/current/")):
        upstream.release.files[path] = served
    before = sorted(mirror_root.rglob("*"))
    run = fetch(mirror_root, upstream)
    assert run.returncode == ExitCode.USAGE, run.stderr
    expected = "is not a qcow2 image" if damage == "not-qcow2" else "wrong checksum"
    assert expected in run.stderr and IMAGE in run.stderr
    assert sorted(mirror_root.rglob("*")) == before  # nothing new: no box, no part, no upstream files
    assert MirrorStore(mirror_root).entries() == []


def test_an_image_signature_by_another_key_is_refused(
    mirror_root: Path, upstream: ReleaseUpstream, keys: SigningKeys, tmp_path: Path
) -> None:
    image = qcow2_image(tmp_path)
    release = upstream.publish_qemu_image("flatcar", "stable", "3815.2.0", image)
    forged = keys.detach_sign(image, keys.stranger)
    for prefix in (release.dir_path, "/stable/amd64-usr/current"):
        upstream.release.files[f"{prefix}/{IMAGE}.sig"] = forged
    run = fetch(mirror_root, upstream, "--keyring", keys.keyring)
    assert run.returncode == ExitCode.USAGE, run.stderr
    assert f"{IMAGE}.sig" in run.stderr and "does not verify" in run.stderr
    assert MirrorStore(mirror_root).entries() == [] and MirrorStore(mirror_root).part_paths() == []


def test_a_release_without_a_qemu_image_is_refused(mirror_root: Path, upstream: ReleaseUpstream) -> None:
    upstream.publish("flatcar", "stable", "3815.2.0")  # the Vagrant box only
    run = fetch(mirror_root, upstream)
    assert run.returncode == ExitCode.USAGE, run.stderr
    assert f"3815.2.0/{IMAGE}.DIGESTS: not found (HTTP 404)" in run.stderr
    assert sorted(mirror_root.rglob("*")) == []
