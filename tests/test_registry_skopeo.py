"""A real registry client against `lab mirror serve`: skopeo (containers/image) inspects, lists and copies the
mirror's images over plain HTTP, and what it copies is byte for byte what the store holds."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.mirror import MirrorProcess, mirror_server
from harness.served_images import add_image, add_index

from coreos_lab.mirror.images.manifests import DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_MANIFEST
from coreos_lab.mirror.images.store import ImageStore

pytestmark = pytest.mark.integration


def skopeo(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    # --insecure-policy: the copy is about bytes, not about the machine's signature policy.
    run = subprocess.run(
        ["skopeo", "--insecure-policy", *args], capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL
    )
    if check and run.returncode != 0:
        raise AssertionError(f"skopeo {' '.join(args)} failed ({run.returncode}):\n{run.stderr}")
    return run


def files_by_digest(directory: Path) -> dict[str, bytes]:
    """Every file below `directory` by the sha256 of its bytes (names differ between oci: and dir:)."""
    return {
        f"sha256:{hashlib.sha256(p.read_bytes()).hexdigest()}": p.read_bytes()
        for p in directory.rglob("*")
        if p.is_file()
    }


@pytest.fixture
def store(mirror_root: Path) -> ImageStore:
    return ImageStore(mirror_root)


@pytest.fixture
def served(store: ImageStore) -> Iterator[MirrorProcess]:
    with mirror_server(store.dir.parent, "--no-live") as srv:
        yield srv


def docker_ref(server: MirrorProcess, name: str) -> str:
    return f"docker://{server.url.removeprefix('http://')}/{name}"


def test_inspect_and_copy_give_the_stored_bytes(store: ImageStore, served: MirrorProcess, tmp_path: Path) -> None:
    built = add_image(store, "coreos/etcd", "v3.5.16", layer_sizes=(1_500_000, 40_000, 10))
    ref = docker_ref(served, "coreos/etcd:v3.5.16")
    inspected = json.loads(skopeo("inspect", "--tls-verify=false", ref).stdout)
    assert inspected["Digest"] == built.digest
    assert inspected["Layers"] == built.layers()
    assert skopeo("inspect", "--tls-verify=false", "--raw", ref).stdout.encode() == built.blobs[built.digest]

    skopeo("copy", "--src-tls-verify=false", ref, f"oci:{tmp_path / 'copy'}:x")
    copied = {p.name: p.read_bytes() for p in (tmp_path / "copy" / "blobs" / "sha256").iterdir()}
    expected = {d.digest.removeprefix("sha256:") for d in store.required_blobs(built.descriptor)}
    assert set(copied) == expected
    for hexdigest, data in copied.items():
        assert hashlib.sha256(data).hexdigest() == hexdigest
        assert data == store.read_blob(f"sha256:{hexdigest}")
    # Every blob went out in one 200 (no retries), and the access log counted its bytes.
    for layer in built.layers():
        (line,) = served.access_lines(f"/v2/coreos/etcd/blobs/{layer}")
        assert f'" 200 {len(built.blobs[layer])} ' in line


def test_copy_all_platforms_of_an_index(store: ImageStore, served: MirrorProcess, tmp_path: Path) -> None:
    built = add_index(store, "coreos/etcd", "multi", platforms=("linux/amd64", "linux/arm64/v8", "linux/s390x"))
    ref = docker_ref(served, "coreos/etcd:multi")
    skopeo("copy", "--all", "--src-tls-verify=false", ref, f"oci:{tmp_path / 'all'}:multi")
    index = json.loads((tmp_path / "all" / "index.json").read_text())
    assert [m["digest"] for m in index["manifests"]] == [built.digest]  # the index itself, unchanged
    assert files_by_digest(tmp_path / "all" / "blobs") == built.blobs  # every platform, byte for byte

    # Without --all: the client's platform (amd64) out of the index.
    skopeo("copy", "--src-tls-verify=false", ref, f"oci:{tmp_path / 'one'}:multi")
    index = json.loads((tmp_path / "one" / "index.json").read_text())
    assert [m["digest"] for m in index["manifests"]] == [built.manifests["linux/amd64"].digest]


def test_an_index_fetched_for_one_platform(store: ImageStore, served: MirrorProcess, tmp_path: Path) -> None:
    """What `lab mirror image fetch --platform linux/amd64` leaves: the index as upstream has it, one platform."""
    built = add_index(store, "coreos/etcd", "v3.5.16", present=("linux/amd64",))
    ref = docker_ref(served, "coreos/etcd:v3.5.16")
    inspected = json.loads(skopeo("inspect", "--tls-verify=false", ref).stdout)
    assert inspected["Digest"] == built.digest and inspected["Layers"] == built.layers("linux/amd64")
    skopeo("copy", "--src-tls-verify=false", ref, f"oci:{tmp_path / 'amd64'}:x")
    copied = files_by_digest(tmp_path / "amd64" / "blobs")
    amd64 = built.manifests["linux/amd64"]
    assert set(copied) == {d.digest for d in store.required_blobs(amd64)}
    assert all(data == built.blobs[digest] for digest, data in copied.items())

    arm64 = skopeo(
        "copy", "--override-arch", "arm64", "--src-tls-verify=false", ref, f"oci:{tmp_path / 'a'}:x", check=False
    )
    assert arm64.returncode != 0 and "manifest unknown" in arm64.stderr.lower()
    everything = skopeo("copy", "--all", "--src-tls-verify=false", ref, f"oci:{tmp_path / 'b'}:x", check=False)
    assert everything.returncode != 0 and built.manifests["linux/arm64/v8"].digest in everything.stderr


def test_docker_media_types_are_served_as_they_are(store: ImageStore, served: MirrorProcess, tmp_path: Path) -> None:
    """dir: keeps manifests as they come (oci: would convert Docker's to OCI's)."""
    single = add_image(store, "library/debian", "12", kind=DOCKER_MANIFEST)
    listed = add_index(store, "library/debian", "multi", kind=DOCKER_MANIFEST)
    for built, tag in ((single, "12"), (listed, "multi")):
        target = tmp_path / tag
        skopeo("copy", "--all", "--src-tls-verify=false", docker_ref(served, f"library/debian:{tag}"), f"dir:{target}")
        assert (target / "manifest.json").read_bytes() == built.blobs[built.digest]
        (target / "version").unlink()  # dir:'s own marker file
        assert files_by_digest(target) == built.blobs
    assert json.loads(single.blobs[single.digest])["mediaType"] == DOCKER_MANIFEST
    assert json.loads(listed.blobs[listed.digest])["mediaType"] == DOCKER_MANIFEST_LIST


def test_list_tags_and_pinned_digest(store: ImageStore, served: MirrorProcess) -> None:
    built = add_image(store, "coreos/etcd", "v3.5.16", kind=OCI_MANIFEST)
    for tag in ("v3.5.15", "latest"):
        store.tag_image("coreos/etcd", tag, built.descriptor, source=None, platforms="all")
    listed = json.loads(skopeo("list-tags", "--tls-verify=false", docker_ref(served, "coreos/etcd")).stdout)
    assert listed == {
        "Repository": f"{served.url.removeprefix('http://')}/coreos/etcd",
        "Tags": ["latest", "v3.5.15", "v3.5.16"],
    }
    pinned = json.loads(
        skopeo("inspect", "--tls-verify=false", docker_ref(served, f"coreos/etcd@{built.digest}")).stdout
    )
    assert pinned["Digest"] == built.digest
    missing = skopeo("inspect", "--tls-verify=false", docker_ref(served, "coreos/etcd:v9"), check=False)
    assert missing.returncode != 0 and "manifest unknown" in missing.stderr.lower()
    unknown = skopeo("inspect", "--tls-verify=false", docker_ref(served, "coreos/nope:v1"), check=False)
    assert unknown.returncode != 0 and "coreos/nope" in unknown.stderr


def test_serve_announces_the_pull_commands(store: ImageStore) -> None:
    add_image(store, "coreos/etcd", "v3.5.16")
    with mirror_server(store.dir.parent, "--no-live") as srv:
        host = srv.url.removeprefix("http://")
        assert "0 box names, 1 image at /v2/" in srv.lines[0]
        assert f"  docker pull {host}/coreos/etcd:v3.5.16" in srv.lines
