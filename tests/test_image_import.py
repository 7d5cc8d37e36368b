"""`lab mirror image import`: `docker save` archives and OCI layout tarballs written by skopeo from the tests' own
images (tests/harness/oci_images.py), and malformed ones; the result checked with skopeo."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from harness.cli import lab
from harness.oci_images import MULTI, SINGLE, BuiltImages, built_images, save_docker_archive, skopeo, tar_directory

from coreos_lab.errors import ExitCode
from coreos_lab.mirror.images.store import ImageStore

__all__ = ["built_images"]  # the fixture, imported for this module's tests

pytestmark = [pytest.mark.integration, pytest.mark.registry]


def import_(root: Path, archive: Path, *args: str):  # type: ignore[no-untyped-def]
    return lab("mirror", "image", "import", archive, "--root", root, "--json", *args)


@pytest.fixture
def docker_archive(tmp_path: Path, built_images: BuiltImages) -> Path:
    archive = tmp_path / "etcd-docker-save.tar"
    save_docker_archive(built_images.source(SINGLE), archive, "coreos/etcd:v3.5.16")
    return archive


@pytest.fixture
def layout_tarball(tmp_path: Path, built_images: BuiltImages) -> Path:
    """The two-platform image as skopeo writes an OCI layout, as a tar."""
    layout = tmp_path / "layout"
    skopeo("copy", "--all", built_images.source(MULTI), f"oci:{layout}:coreos/etcd:multi")
    tar_directory(layout, tmp_path / "etcd-oci.tar")
    return tmp_path / "etcd-oci.tar"


def rewrite_tar(source: Path, destination: Path, change: Callable[[str, bytes], bytes | None]) -> None:
    """A copy of a tar with each regular member's bytes passed through `change` (None drops the member)."""
    with tarfile.open(source) as src, tarfile.open(destination, "w") as dst:
        for member in src.getmembers():
            if not member.isfile():
                dst.addfile(member)
                continue
            extracted = src.extractfile(member)
            assert extracted is not None
            data = change(member.name, extracted.read())
            if data is not None:
                member.size = len(data)
                dst.addfile(member, io.BytesIO(data))


def flip_middle_byte(data: bytes) -> bytes:
    changed = bytearray(data)
    changed[len(changed) // 2] ^= 0xFF
    return bytes(changed)


def catalog_is_empty(root: Path) -> bool:
    store = ImageStore(root)
    return store.images() == [] and not store.index_path.exists() and store.part_paths() == []


# -- the two formats ------------------------------------------------------------------------------------


def test_a_docker_save_archive(mirror_root: Path, docker_archive: Path, tmp_path: Path) -> None:
    run = import_(mirror_root, docker_archive)
    assert run.returncode == 0, run.stderr
    doc = run.json()
    assert doc["format"] == "docker-save"
    (imported,) = doc["images"]
    # RepoTags says docker.io/coreos/etcd:v3.5.16: kept without the registry host, as a fetch keeps it.
    assert imported["action"] == "added" and imported["image"]["repository"] == "coreos/etcd"
    assert imported["image"]["tag"] == "v3.5.16" and imported["image"]["platforms"] == "all"
    assert doc["copied"]["blobs"] == 4  # the config, two layers and the manifest built for them

    # The same image as skopeo sees it in the archive: config and layers, under the name given.
    source = json.loads(skopeo("inspect", f"docker-archive:{docker_archive}"))
    stored = json.loads(skopeo("inspect", f"oci:{mirror_root}/images:coreos/etcd:v3.5.16"))
    assert stored["Layers"] == source["Layers"] and stored["Architecture"] == "amd64"
    with tarfile.open(docker_archive) as tar:
        config_name = json.load(tar.extractfile("manifest.json"))[0]["Config"]  # type: ignore[arg-type]
    raw = json.loads(skopeo("inspect", "--raw", f"oci:{mirror_root}/images:coreos/etcd:v3.5.16"))
    assert raw["config"]["digest"] == "sha256:" + config_name.removesuffix(".json")
    skopeo("copy", f"oci:{mirror_root}/images:coreos/etcd:v3.5.16", f"oci:{tmp_path / 'out'}:etcd")  # reads every blob

    again = import_(mirror_root, docker_archive)
    assert again.returncode == 0, again.stderr
    assert again.json()["images"][0]["action"] == "unchanged" and again.json()["copied"]["blobs"] == 0
    renamed = import_(mirror_root, docker_archive, "--name", "team/etcd:pinned")
    assert renamed.returncode == 0, renamed.stderr
    assert renamed.json()["images"][0]["image"]["digest"] == imported["image"]["digest"]
    assert renamed.json()["copied"]["blobs"] == 0 and renamed.json()["reused"]["blobs"] == 4
    assert sorted(i.name for i in ImageStore(mirror_root).images()) == ["coreos/etcd:v3.5.16", "team/etcd:pinned"]
    human = lab("mirror", "image", "import", docker_archive, "--root", mirror_root)
    assert "coreos/etcd:v3.5.16 is already in the mirror" in human.stderr


def test_layers_named_through_links(mirror_root: Path, docker_archive: Path, tmp_path: Path) -> None:
    """Docker's own archives name layers `<id>/layer.tar`, often symbolic links to another member."""
    with tarfile.open(docker_archive) as tar:
        links = {m.linkname.removeprefix("../"): m.name for m in tar.getmembers() if m.issym()}
    assert links  # skopeo writes <id>/layer.tar links to <diff id>.tar, as Docker does

    def via_links(name: str, data: bytes) -> bytes:
        if name != "manifest.json":
            return data
        doc = json.loads(data)
        doc[0]["Layers"] = [links[layer] for layer in doc[0]["Layers"]]
        return json.dumps(doc).encode()

    linked = tmp_path / "linked.tar"
    rewrite_tar(docker_archive, linked, via_links)
    run = import_(mirror_root, linked)
    assert run.returncode == 0, run.stderr
    direct = import_(tmp_path / "direct", docker_archive)
    assert run.json()["images"][0]["image"]["digest"] == direct.json()["images"][0]["image"]["digest"]


def test_an_oci_layout_tarball_keeps_the_digests(
    mirror_root: Path, layout_tarball: Path, built_images: BuiltImages, tmp_path: Path
) -> None:
    compressed = tmp_path / "etcd-oci.tar.gz"
    compressed.write_bytes(gzip.compress(layout_tarball.read_bytes(), compresslevel=1))
    run = import_(mirror_root, compressed)
    assert run.returncode == 0, run.stderr
    doc = run.json()
    assert doc["format"] == "oci-layout"
    (imported,) = doc["images"]
    assert imported["image"]["repository"] == "coreos/etcd" and imported["image"]["tag"] == "multi"
    assert imported["image"]["digest"] == built_images.index.digest and imported["image"]["platforms"] == "all"
    store = ImageStore(mirror_root)
    for manifest in (built_images.amd64, built_images.arm64):
        assert store.has_blob(manifest.digest)
    skopeo("copy", "--all", f"oci:{mirror_root}/images:coreos/etcd:multi", f"oci:{tmp_path / 'out'}:etcd")
    again = import_(mirror_root, layout_tarball)
    assert again.returncode == 0 and again.json()["images"][0]["action"] == "unchanged"


def test_names_from_the_archive_or_name(mirror_root: Path, built_images: BuiltImages, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    skopeo("copy", built_images.source(SINGLE), f"oci:{layout}:v3.5.16")  # ref.name a bare tag, as Docker writes it
    tar_directory(layout, tmp_path / "tag-only.tar")
    unnamed = import_(mirror_root, tmp_path / "tag-only.tar")
    assert unnamed.returncode == ExitCode.USAGE
    assert "no repository:tag" in unnamed.stderr and "'v3.5.16'" in unnamed.stderr and "--name" in unnamed.stderr
    assert catalog_is_empty(mirror_root)
    named = import_(mirror_root, tmp_path / "tag-only.tar", "--name", "coreos/etcd:v3.5.16")
    assert named.returncode == 0, named.stderr
    assert named.json()["images"][0]["image"]["digest"] == built_images.single.digest
    bad_name = import_(mirror_root, tmp_path / "tag-only.tar", "--name", "Coreos/etcd")
    assert bad_name.returncode == ExitCode.USAGE and "'Coreos/etcd'" in bad_name.stderr


def test_an_archive_of_several_images_imports_them_all(
    mirror_root: Path, built_images: BuiltImages, docker_archive: Path, tmp_path: Path
) -> None:
    arm64 = tmp_path / "arm64.tar"
    skopeo(
        "copy", "--override-arch", "arm64", "--override-variant", "v8",
        built_images.source(MULTI), f"docker-archive:{arm64}:coreos/etcd:v3.5.16-arm64",
    )  # fmt: skip
    both = tmp_path / "both.tar"
    entries = []
    with tarfile.open(both, "w") as out:
        names: set[str] = set()
        for part in (docker_archive, arm64):
            with tarfile.open(part) as tar:
                for member in tar.getmembers():
                    if member.name == "manifest.json":
                        entries += json.load(tar.extractfile(member))  # type: ignore[arg-type]
                    elif member.name not in names and member.name != "repositories":
                        names.add(member.name)
                        out.addfile(member, tar.extractfile(member) if member.isfile() else None)
        data = json.dumps(entries).encode()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        out.addfile(info, io.BytesIO(data))
    run = import_(mirror_root, both)
    assert run.returncode == 0, run.stderr
    assert sorted(i["image"]["tag"] for i in run.json()["images"]) == ["v3.5.16", "v3.5.16-arm64"]
    # Two manifests, two configs and three layers: both images have the etcd layer, stored once.
    assert run.json()["copied"]["blobs"] == 7
    refused = import_(tmp_path / "other", both, "--name", "coreos/etcd:one")
    assert refused.returncode == ExitCode.USAGE and "holds 2 images" in refused.stderr


def test_a_name_that_holds_another_image_needs_force(
    mirror_root: Path, docker_archive: Path, layout_tarball: Path, built_images: BuiltImages
) -> None:
    first = import_(mirror_root, docker_archive, "--name", "coreos/etcd:moving")
    assert first.returncode == 0, first.stderr
    before = ImageStore(mirror_root).index_path.read_bytes()
    refused = import_(mirror_root, layout_tarball, "--name", "coreos/etcd:moving")
    assert refused.returncode == ExitCode.USAGE
    assert "coreos/etcd:moving is already in the mirror as" in refused.stderr and "--force" in refused.stderr
    assert ImageStore(mirror_root).index_path.read_bytes() == before
    assert not ImageStore(mirror_root).has_blob(built_images.index.digest)  # decided before anything was copied
    forced = import_(mirror_root, layout_tarball, "--name", "coreos/etcd:moving", "--force")
    assert forced.returncode == 0, forced.stderr
    (replaced,) = forced.json()["images"]
    assert replaced["action"] == "replaced" and replaced["image"]["digest"] == built_images.index.digest


# -- malformed archives ---------------------------------------------------------------------------------


def test_files_that_are_no_image_archive(mirror_root: Path, docker_archive: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"\x00not a tar at all" * 100)
    run = import_(mirror_root, junk)
    assert run.returncode == ExitCode.USAGE and f"{junk} is not an image archive" in run.stderr

    other = tmp_path / "other.tar"
    rewrite_tar(docker_archive, other, lambda name, data: None)  # only the (empty) directories and links stay
    run = import_(mirror_root, other)
    assert run.returncode == ExitCode.USAGE and "neither an OCI image layout" in run.stderr

    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(docker_archive.read_bytes()[: docker_archive.stat().st_size // 2])
    run = import_(mirror_root, truncated)
    assert run.returncode == ExitCode.USAGE and str(truncated) in run.stderr
    missing = import_(mirror_root, tmp_path / "nowhere.tar")
    assert missing.returncode == ExitCode.USAGE and "no such file" in missing.stderr
    assert catalog_is_empty(mirror_root)


@pytest.mark.parametrize(
    ("what", "member_pattern", "change", "message"),
    [
        ("manifest.json not JSON", "manifest.json", lambda data: b"[{", "member manifest.json is not JSON"),
        ("a layer missing", ".tar", None, ") is missing"),
        ("a layer changed", ".tar", flip_middle_byte, "the config's rootfs.diff_ids says sha256:"),
        ("the config changed", ".json", lambda data: data.replace(b"amd64", b"arm64"), "but its name says sha256:"),
    ],
)
def test_a_damaged_docker_save_archive_is_refused(
    mirror_root: Path,
    docker_archive: Path,
    tmp_path: Path,
    what: str,
    member_pattern: str,
    change: Callable[[bytes], bytes] | None,
    message: str,
) -> None:
    damaged = tmp_path / "damaged.tar"
    hit: list[str] = []

    def alter(name: str, data: bytes) -> bytes | None:
        if not hit and name.endswith(member_pattern) and "/" not in name and name != "repositories":
            if member_pattern == ".tar" and len(data) < 1 << 20:
                return data  # the big layer
            hit.append(name)
            return change(data) if change is not None else None
        return data

    rewrite_tar(docker_archive, damaged, alter)
    assert hit, what
    run = import_(mirror_root, damaged)
    assert run.returncode == ExitCode.USAGE, run.stderr
    assert f"{damaged}: member" in run.stderr and message in run.stderr
    assert hit[0] in run.stderr
    assert catalog_is_empty(mirror_root)


@pytest.mark.parametrize("which", ["layer", "manifest"])
def test_a_damaged_oci_layout_is_refused(
    mirror_root: Path, layout_tarball: Path, built_images: BuiltImages, tmp_path: Path, which: str
) -> None:
    target = built_images.arm64.digest if which == "manifest" else None
    damaged = tmp_path / "damaged.tar"
    hit: list[str] = []

    def alter(name: str, data: bytes) -> bytes:
        digest = "sha256:" + Path(name).name
        if name.startswith("blobs/") and not hit and (digest == target or (target is None and len(data) > 1 << 20)):
            hit.append(name)
            return flip_middle_byte(data)
        return data

    rewrite_tar(layout_tarball, damaged, alter)
    assert hit
    run = import_(mirror_root, damaged)
    assert run.returncode == ExitCode.USAGE, run.stderr
    assert f"{damaged}: member {hit[0]}: sha256 is" in run.stderr
    assert f"expected sha256:{Path(hit[0]).name}" in run.stderr
    assert catalog_is_empty(mirror_root)
    assert not ImageStore(mirror_root).has_blob(f"sha256:{Path(hit[0]).name}")
