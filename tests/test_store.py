"""The mirror store's catalog: visibility rules, ordering, metadata."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from coreos_lab.errors import BadInput
from coreos_lab.mirror.store import BoxKey, MirrorStore, version_key


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


@pytest.mark.parametrize("name", ["", "../etc", "a/b", ".hidden"])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(BadInput, match="invalid box name"):
        BoxKey(name, "1.0", "virtualbox")
