"""What the mirror answers at each path, decided without a server (coreos_lab.mirror.layout)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from harness.boxes import add_box

from coreos_lab.mirror.layout import (
    NO_SUCH_PATH,
    Forbidden,
    Metadata,
    MirrorLayout,
    NotFound,
    Page,
    StoredFile,
    Text,
)
from coreos_lab.mirror.store import BoxKey, MirrorStore

BASE = "http://mirror.example:8080"
BOX = "/coreos-stable/1.0.0/virtualbox-amd64.box"


@pytest.fixture
def store(mirror_root: Path) -> MirrorStore:
    store = MirrorStore(mirror_root)
    add_box(store, "coreos-stable", "1.0.0")
    add_box(store, "coreos-stable", "1.1.0")
    add_box(store, "coreos-stable", "1.1.0", provider="libvirt")
    add_box(store, "flatcar-beta", "3850.1.0")
    return store


@pytest.fixture
def layout(store: MirrorStore) -> MirrorLayout:
    return MirrorLayout(store)


def metadata(layout: MirrorLayout, path: str) -> dict:
    answer = layout.resolve(path, BASE)
    assert isinstance(answer, Metadata), (path, answer)
    return answer.document


def versions(doc: dict) -> list[str]:
    return [v["version"] for v in doc["versions"]]


def test_metadata_lists_every_version_and_provider_with_urls_under_the_base(layout: MirrorLayout) -> None:
    doc = metadata(layout, "/coreos-stable")
    assert doc == metadata(layout, "/coreos-stable.json")
    assert doc["name"] == "coreos-stable" and versions(doc) == ["1.0.0", "1.1.0"]
    assert [p["name"] for p in doc["versions"][1]["providers"]] == ["libvirt", "virtualbox"]
    assert doc["versions"][0]["providers"][0]["url"] == BASE + BOX


def test_a_box_is_its_file_in_the_store(layout: MirrorLayout, store: MirrorStore) -> None:
    answer = layout.resolve(BOX, BASE)
    key = BoxKey("coreos-stable", "1.0.0", "virtualbox")
    assert answer == StoredFile(store.artifact_path(key).resolve(), key.relpath)


def test_seed_names_answer_one_version(layout: MirrorLayout) -> None:
    seed = "coreos_production_vagrant.json"
    assert versions(metadata(layout, f"/{seed}")) == ["1.1.0"]
    assert versions(metadata(layout, f"/stable/{seed}")) == ["1.1.0"]
    assert versions(metadata(layout, f"/stable/amd64-usr/current/{seed}")) == ["1.1.0"]
    assert versions(metadata(layout, f"/stable/amd64-usr/1.0.0/{seed}")) == ["1.0.0"]
    assert metadata(layout, "/flatcar_production_vagrant.json")["name"] == "flatcar-beta"  # the only channel
    assert layout.resolve(f"/stable/amd64-usr/9.9.9/{seed}", BASE) == NotFound(
        "coreos-stable has no version '9.9.9' in this mirror (stored: 1.0.0, 1.1.0)\n"
    )


def test_seed_name_with_several_channels_and_no_stable_names_them(layout: MirrorLayout, store: MirrorStore) -> None:
    add_box(store, "flatcar-lts", "3510.3.0")
    assert layout.resolve("/flatcar_production_vagrant.json", BASE) == NotFound(
        f"no flatcar-stable in this mirror; pick a channel: {BASE}/beta/flatcar_production_vagrant.json "
        f"{BASE}/lts/flatcar_production_vagrant.json\n"
    )


def test_release_layout(layout: MirrorLayout, store: MirrorStore) -> None:
    release = "/coreos/stable/amd64-usr"
    assert layout.resolve(f"{release}/current/version.txt", BASE) == Text(
        "COREOS_VERSION=1.1.0\nCOREOS_VERSION_ID=1.1.0\n"
    )
    assert versions(metadata(layout, f"{release}/1.0.0/coreos_production_vagrant.json")) == ["1.0.0"]
    box = layout.resolve(f"{release}/1.0.0/coreos_production_vagrant.box", BASE)
    assert box == layout.resolve(BOX, BASE)
    assert layout.resolve(f"{release}/1.0.0/coreos_production_vagrant.box.DIGESTS", BASE) == NotFound(
        "coreos-stable 1.0.0 was not fetched from a release server: no coreos_production_vagrant.box.DIGESTS\n"
    )
    kept = store.upstream_dir("coreos-stable", "1.0.0")
    kept.mkdir()
    (kept / "coreos_production_vagrant.box.DIGESTS").write_text("# SHA512 HASH\n")
    digests = layout.resolve(f"{release}/1.0.0/coreos_production_vagrant.box.DIGESTS", BASE)
    assert digests == StoredFile(
        (kept / "coreos_production_vagrant.box.DIGESTS").resolve(),
        "coreos-stable/1.0.0/upstream/coreos_production_vagrant.box.DIGESTS",
    )
    assert layout.resolve(f"{release}/1.0.0/other.txt", BASE) == NotFound(
        "no other.txt in the release layout (version.txt, coreos_production_vagrant.json, .box, .box.DIGESTS, …)\n"
    )
    assert layout.resolve(f"{release}/2.0.0/version.txt", BASE) == NotFound(
        "no virtualbox box coreos-stable 2.0.0 in this mirror\n"
    )


def test_index_page(layout: MirrorLayout) -> None:
    page = layout.resolve("/", BASE)
    assert isinstance(page, Page)
    assert f"vagrant box add --box-version 1.1.0 {BASE}/coreos-stable" in page.html


NO_BOX_AT = "no box at /coreos-stable/{} in this mirror\n"


@pytest.mark.parametrize(
    ("path", "text"),
    [
        ("/nope", f"no box named 'nope' in this mirror (see {BASE}/)\n"),
        ("/nope.json", f"no box named 'nope' in this mirror (see {BASE}/)\n"),
        ("/coreos-stable/9.9.9/virtualbox-amd64.box", NO_BOX_AT.format("9.9.9/virtualbox-amd64.box")),
        ("/coreos-stable/1.0.0/virtualbox-amd64.box.part", NO_BOX_AT.format("1.0.0/virtualbox-amd64.box.part")),
        ("/coreos-stable/1.0.0/virtualbox-amd64.record.json", NO_BOX_AT.format("1.0.0/virtualbox-amd64.record.json")),
        ("/coreos-stable/1.0.0/..%2F..%2Fetc%2Fpasswd", NO_BOX_AT.format("1.0.0/../../etc/passwd")),
        ("/beta/coreos_production_vagrant.json", f"no box named 'coreos-beta' in this mirror (see {BASE}/)\n"),
    ],
)
def test_refusals_say_what_is_missing(layout: MirrorLayout, path: str, text: str) -> None:
    assert layout.resolve(path, BASE) == NotFound(text)


@pytest.mark.parametrize(
    "path",
    [
        "/a/b/c/d/e/f",
        "/.discovery/state.json",
        "/%2e%2e/%2e%2e/etc/passwd",
        "//etc/passwd",
        "/coreos-stable/1.0.0/",
        "/coreos-stable%0A",
        "/coreos-stable/1.0.0%0A/virtualbox-amd64.box",
    ],
)
def test_paths_of_no_shape_are_not_found(layout: MirrorLayout, path: str) -> None:
    assert layout.resolve(path, BASE) == NO_SUCH_PATH


def test_symlinks_out_of_the_root_are_refused_inside_it_resolved(
    layout: MirrorLayout, store: MirrorStore, tmp_path: Path
) -> None:
    box = store.root / BOX.lstrip("/")
    kept = store.root / "coreos-stable" / "1.0.0" / "kept.bin"
    box.rename(kept)
    os.symlink(kept, box)
    assert layout.resolve(BOX, BASE) == StoredFile(kept.resolve(), BOX.lstrip("/"))
    outside = tmp_path / "outside.box"
    outside.write_bytes(b"secret")
    box.unlink()
    os.symlink(outside, box)
    # Left out of the catalog (`lab mirror list` and `verify` say why): not served, nor advertised.
    assert layout.resolve(BOX, BASE) == NotFound(f"no box at {BOX} in this mirror\n")
    assert BOX not in layout.paths()
    side = store.upstream_dir("coreos-stable", "1.1.0") / "coreos_production_vagrant.box.sig"
    side.parent.mkdir()
    os.symlink(outside, side)
    assert layout.resolve("/coreos/stable/amd64-usr/1.1.0/coreos_production_vagrant.box.sig", BASE) == Forbidden(
        "forbidden: the file lies outside the mirror root\n"
    )


def test_paths_lists_exactly_what_resolves_to_content(layout: MirrorLayout, store: MirrorStore) -> None:
    kept = store.upstream_dir("coreos-stable", "1.1.0")
    kept.mkdir()
    (kept / "coreos_production_vagrant.box.sig").write_bytes(b"sig")
    paths = layout.paths()
    for path in paths:
        assert not isinstance(layout.resolve(path, BASE), NotFound | Forbidden), path
    assert len(paths) == len(set(paths))
    release = "/coreos/stable/amd64-usr"
    assert {
        "/",
        "/coreos-stable",
        "/coreos-stable.json",
        BOX,
        "/coreos-stable/1.1.0/libvirt-amd64.box",
        "/coreos_production_vagrant.json",
        "/flatcar_production_vagrant.json",
        "/beta/flatcar_production_vagrant.json",
        "/stable/amd64-usr/current/coreos_production_vagrant.json",
        "/stable/amd64-usr/1.0.0/coreos_production_vagrant.json",
        f"{release}/current/version.txt",
        f"{release}/1.0.0/coreos_production_vagrant.box",
        f"{release}/1.1.0/coreos_production_vagrant.box.sig",
        f"{release}/current/coreos_production_vagrant.box.sig",
        "/flatcar/beta/amd64-usr/3850.1.0/flatcar_production_vagrant.json",
    } <= set(paths)
    assert f"{release}/1.0.0/coreos_production_vagrant.box.sig" not in paths


def test_paths_of_an_empty_mirror(mirror_root: Path) -> None:
    assert MirrorLayout(MirrorStore(mirror_root)).paths() == ["/"]
