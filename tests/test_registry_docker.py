"""Docker's own client against `lab mirror serve`: a private dockerd (tests/harness/dockerd.py) pulls the mirror's
images over plain HTTP (Docker allows it for 127.0.0.0/8 without --insecure-registry), as a guest's Docker does."""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.dockerd import Dockerd
from harness.mirror import MirrorProcess, mirror_server
from harness.served_images import Built, add_image, add_index

from coreos_lab.mirror.images.manifests import DOCKER_MANIFEST
from coreos_lab.mirror.images.store import ImageStore

pytestmark = [pytest.mark.integration, pytest.mark.docker]


@pytest.fixture(scope="module")
def dockerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dockerd]:
    with Dockerd(tmp_path_factory.mktemp("dockerd")) as daemon:
        yield daemon


@pytest.fixture
def store(mirror_root: Path) -> ImageStore:
    return ImageStore(mirror_root)


@pytest.fixture
def served(store: ImageStore) -> Iterator[MirrorProcess]:
    with mirror_server(store.dir.parent, "--no-live") as srv:
        yield srv


def config_of(built: Built, platform: str = "linux/amd64") -> dict[str, object]:
    manifest = json.loads(built.blobs[built.manifests[platform].digest])
    return {"digest": manifest["config"]["digest"], **json.loads(built.blobs[manifest["config"]["digest"]])}


def saved_layer_digests(dockerd: Dockerd, image: str, tmp_path: Path) -> set[str]:
    """The sha256 of each layer tar `docker save` writes: Docker keeps a layer's tar as it came (tar-split), so
    these are the config's diff_ids when the pulled layers were the stored ones."""
    archive = tmp_path / "saved.tar"
    dockerd.docker("save", "-o", str(archive), image)
    found = set()
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            if member.isfile() and member.name.endswith("layer.tar"):
                data = tar.extractfile(member).read()  # type: ignore[union-attr]
                found.add(f"sha256:{hashlib.sha256(data).hexdigest()}")
    return found


def test_docker_pull_of_an_index_fetched_for_amd64(
    dockerd: Dockerd, store: ImageStore, served: MirrorProcess, tmp_path: Path
) -> None:
    """The etcd case: the upstream index kept, linux/amd64 in the mirror."""
    built = add_index(store, "coreos/etcd", "v3.5.16", present=("linux/amd64",), layer_sizes=(2_000_000, 5_000))
    registry = served.url.removeprefix("http://")
    image = f"{registry}/coreos/etcd:v3.5.16"
    dockerd.docker("pull", image)
    inspected = json.loads(dockerd.docker("image", "inspect", image).stdout)[0]
    config = config_of(built)
    assert inspected["Id"] == config["digest"]
    assert f"{registry}/coreos/etcd@{built.digest}" in inspected["RepoDigests"]
    assert inspected["RootFS"]["Layers"] == config["rootfs"]["diff_ids"]  # type: ignore[index]
    assert saved_layer_digests(dockerd, image, tmp_path) == set(config["rootfs"]["diff_ids"])  # type: ignore[index]
    for layer in built.layers():
        assert served.access_lines(f"/v2/coreos/etcd/blobs/{layer}"), layer

    arm64 = dockerd.docker("pull", "--platform", "linux/arm64", image, check=False)
    assert arm64.returncode != 0 and "manifest unknown" in arm64.stderr.lower(), arm64.stderr
    dockerd.docker("image", "rm", image)


def test_docker_pull_of_docker_media_types_by_digest_and_a_refused_push(
    dockerd: Dockerd, store: ImageStore, served: MirrorProcess
) -> None:
    built = add_image(store, "library/busybox", "1", kind=DOCKER_MANIFEST)
    registry = served.url.removeprefix("http://")
    pinned = f"{registry}/library/busybox@{built.digest}"
    dockerd.docker("pull", pinned)
    inspected = json.loads(dockerd.docker("image", "inspect", pinned).stdout)[0]
    assert inspected["Id"] == config_of(built)["digest"]

    # A push is refused: the mirror is read-only, and nothing reaches the store.
    before = store.index_path.read_bytes(), sorted(p.name for p in store.blob_paths())
    dockerd.docker("tag", pinned, f"{registry}/library/pushed:1")
    run = dockerd.docker("push", f"{registry}/library/pushed:1", check=False)
    assert run.returncode != 0 and "unsupported" in run.stderr.lower(), run.stderr
    assert served.access_lines("/v2/library/pushed/blobs/uploads/") and all(
        '" 405 ' in line for line in served.access_lines("/v2/library/pushed/blobs/uploads/")
    )
    assert (store.index_path.read_bytes(), sorted(p.name for p in store.blob_paths())) == before
    dockerd.docker("image", "rm", pinned, f"{registry}/library/pushed:1")


def test_docker_pull_of_what_the_mirror_has_not(dockerd: Dockerd, store: ImageStore, served: MirrorProcess) -> None:
    add_image(store, "coreos/etcd", "v3.5.16")
    registry = served.url.removeprefix("http://")
    for image, said in ((f"{registry}/coreos/etcd:v9", "manifest unknown"), (f"{registry}/coreos/nope:1", "nope")):
        run = dockerd.docker("pull", image, check=False)
        assert run.returncode != 0 and said in run.stderr.lower(), run.stderr
