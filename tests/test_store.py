"""The mirror store's catalog: visibility rules, ordering, metadata."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from coreos_lab.errors import BadInput
from coreos_lab.mirror.store import BOX, Admission, BoxKey, MirrorStore, version_key
from coreos_lab.mirror.verify import verify_store


def _stage(store: MirrorStore, key: BoxKey, data: bytes) -> tuple[Path, str]:
    part = store.part_path(key)
    part.parent.mkdir(parents=True, exist_ok=True)
    part.write_bytes(data)
    return part, hashlib.sha256(data).hexdigest()


def test_commit_makes_box_visible_and_part_never_listed(mirror_root: Path) -> None:
    store = MirrorStore(mirror_root)
    key = BoxKey("flatcar-stable", "3815.2.0", "virtualbox")
    part, digest = _stage(store, key, b"box bytes")
    assert store.entries() == []
    entry = store.commit(key, part, sha256=digest)
    assert not part.exists()
    assert store.entries() == [entry]
    assert entry.size == 9


def test_versions_sort_in_rubygems_order(mirror_root: Path) -> None:
    store = MirrorStore(mirror_root)
    for version in ("1010.5.0", "717.3.0", "1010.5.0.rc1", "2.0"):
        key = BoxKey("coreos-stable", version, "virtualbox")
        part, digest = _stage(store, key, version.encode())
        store.commit(key, part, sha256=digest)
    assert [e.version for e in store.entries()] == ["2.0", "717.3.0", "1010.5.0.rc1", "1010.5.0"]
    assert version_key("1.0") < version_key("1.0.1")


def test_vagrant_metadata_has_absolute_urls(mirror_root: Path) -> None:
    store = MirrorStore(mirror_root)
    key = BoxKey("coreos-stable", "717.3.0", "virtualbox")
    part, digest = _stage(store, key, b"x")
    store.commit(key, part, sha256=digest)
    meta = store.vagrant_metadata("coreos-stable", "http://127.0.0.1:8080/")
    assert meta is not None
    provider = meta["versions"][0]["providers"][0]
    assert provider["url"] == "http://127.0.0.1:8080/coreos-stable/717.3.0/virtualbox-amd64.box"
    assert provider["checksum"] == digest and provider["checksum_type"] == "sha256"
    assert store.vagrant_metadata("nothing-here", "http://x") is None


@pytest.mark.parametrize(
    "name", ["", "../etc", "a/b/c", "/a", "a/", "a//b", "../a", "a/..", "a/.hidden", ".hidden", "images/x", "a\nb"]
)
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(BadInput, match="invalid box name"):
        BoxKey(name, "1.0", "virtualbox")


def test_an_org_name_is_one_directory_deeper(tmp_path: Path) -> None:
    """Vagrant Cloud's `org/name`: the org a directory, beside plain names, one of which may be the org's name."""
    store = MirrorStore(tmp_path)
    keys = (
        BoxKey("bento/debian-12", "1.0", "virtualbox"),
        BoxKey("bento", "2.0", "libvirt"),
        BoxKey("centos/7", "2004.01", "virtualbox"),
    )
    for key in keys:
        part = store.part_path(key)
        part.parent.mkdir(parents=True, exist_ok=True)
        part.write_bytes(b"box")
        store.commit(key, part, sha256=hashlib.sha256(b"box").hexdigest())
    assert store.artifact_path(BoxKey("bento/debian-12", "1.0", "virtualbox")).is_relative_to(tmp_path / "bento")
    assert [e.name for e in store.entries()] == ["bento", "bento/debian-12", "centos/7"]  # a name like a version too
    assert [e.name for e in store.entries("bento")] == ["bento"]
    assert [e.name for e in store.entries("bento/debian-12")] == ["bento/debian-12"]
    assert [e.version for e in store.entries("centos/7")] == ["2004.01"]
    assert store.part_paths() == [] and len(store.record_paths()) == 3


def _legacy_store(root: Path) -> dict[str, bytes]:
    """A mirror as `lab` wrote it before records named their kind: records without `kind` (the oldest also
    without `architecture`), an upstream directory, a `.part` and discovery state beside them."""
    boxes = {"coreos-stable/1235.9.0/virtualbox-amd64": b"old box", "flatcar-stable/3815.2.0/libvirt-amd64": b"new"}
    for stem, data in boxes.items():
        name, version, file = stem.split("/")
        provider, arch = file.split("-")
        (root / name / version).mkdir(parents=True)
        (root / f"{stem}.box").write_bytes(data)
        record = {"name": name, "version": version, "provider": provider, "architecture": arch}
        if name == "coreos-stable":
            del record["architecture"]
        record |= {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        record |= {"added_at": "2024-01-02T03:04:05Z", "source": "https://example/box", "description": None}
        (root / f"{stem}.record.json").write_text(json.dumps(record, indent=2) + "\n")
    (root / "coreos-stable/1235.9.0/upstream").mkdir()
    (root / "coreos-stable/1235.9.0/upstream/coreos_production_vagrant.box.DIGESTS").write_text("# SHA512 HASH\n")
    (root / "flatcar-stable/3815.2.0/virtualbox-amd64.box.part").write_bytes(b"half")
    (root / ".discovery").mkdir()
    (root / ".discovery/state.json").write_text("{}")
    return boxes


def test_a_store_written_before_kinds_reads_the_same(mirror_root: Path) -> None:
    boxes = _legacy_store(mirror_root)
    store = MirrorStore(mirror_root)
    entries = store.entries()
    assert [str(e.key) for e in entries] == [
        "coreos-stable 1235.9.0 (virtualbox, amd64)",
        "flatcar-stable 3815.2.0 (libvirt, amd64)",
    ]
    assert all(e.kind == BOX for e in entries) and store.entries(kind=BOX) == entries
    assert [store.artifact_path(e.key).read_bytes() for e in entries] == list(boxes.values())
    assert entries[0].as_dict("http://m") == {
        "name": "coreos-stable",
        "version": "1235.9.0",
        "provider": "virtualbox",
        "architecture": "amd64",
        "size": 7,
        "sha256": hashlib.sha256(b"old box").hexdigest(),
        "added_at": "2024-01-02T03:04:05Z",
        "source": "https://example/box",
        "metadata_url": "http://m/coreos-stable",
        "box_url": "http://m/coreos-stable/1235.9.0/virtualbox-amd64.box",
    }
    assert store.latest("flatcar-stable", "libvirt") == entries[1]
    assert store.get(BoxKey("flatcar-stable", "3815.2.0", "virtualbox")) is None  # only a .part
    assert store.part_paths() == [mirror_root / "flatcar-stable/3815.2.0/virtualbox-amd64.box.part"]
    assert verify_store(store).ok


def test_records_name_their_kind_and_an_unknown_kind_is_a_damaged_record(mirror_root: Path) -> None:
    store = MirrorStore(mirror_root)
    key = BoxKey("flatcar-stable", "3815.2.0", "virtualbox")
    part, digest = _stage(store, key, b"box bytes")
    store.commit(key, part, sha256=digest)
    record = store.record_path(key)
    doc = json.loads(record.read_text())
    assert doc["kind"] == "box" and doc["provider"] == "virtualbox"
    record.write_text(json.dumps(doc | {"kind": "hologram"}))
    assert store.entries() == []
    with pytest.raises(BadInput, match="unknown kind 'hologram' \\(known: box\\)"):
        store.load_record(record)


def test_admit_decides_added_unchanged_replaced_or_refused(mirror_root: Path) -> None:
    store = MirrorStore(mirror_root)
    key = BoxKey("flatcar-stable", "3815.2.0", "virtualbox")
    assert store.admit(key, force=False, differs=lambda stored: "never asked") == Admission("added", None)
    part, digest = _stage(store, key, b"box bytes")
    entry = store.commit(key, part, sha256=digest)
    same = store.admit(key, force=False, differs=lambda stored: None)
    assert same == Admission("unchanged", entry) and same.unchanged == entry
    with pytest.raises(BadInput) as refused:
        store.admit(key, force=False, differs=lambda stored: "but the new one differs")
    assert refused.value.message == (
        f"flatcar-stable 3815.2.0 (virtualbox, amd64) is already in the mirror with sha256 {digest}, "
        "but the new one differs"
    )
    assert refused.value.hint == "use --force to replace it"
    replaced = store.admit(key, force=True, differs=lambda stored: "but the new one differs")
    assert replaced == Admission("replaced", entry) and replaced.unchanged is None
