"""The whole way of an image: from an upstream registry (docker-registry) into one mirror with `lab mirror image
fetch`, served by `lab mirror serve`, and from there into a second mirror (a team mirror feeding a lab behind
another firewall) and to skopeo: the digests are the upstream's all along."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from harness.cli import lab
from harness.mirror import mirror_server
from harness.oci_images import BuiltImages, built_images, inspect_raw, skopeo
from harness.registry import registry, seed_test_images

from coreos_lab.mirror.images.store import ImageStore

__all__ = ["built_images"]  # the fixture, imported for this module's tests

pytestmark = [pytest.mark.integration, pytest.mark.registry]


def test_an_image_fetched_from_a_mirror_is_the_upstream_image(
    tmp_path: Path, built_images: BuiltImages, mirror_root: Path
) -> None:
    with registry(tmp_path / "registry") as upstream:
        seed_test_images(upstream, built_images)
        upstream_index = inspect_raw(f"{upstream.host}/coreos/etcd:multi")
        first = lab("mirror", "image", "fetch", f"{upstream.host}/coreos/etcd:multi", "--root", mirror_root, "--json")
        assert first.returncode == 0, first.stderr
    with mirror_server(mirror_root, "--no-live") as served:
        host = served.url.removeprefix("http://")
        # What a guest's docker pull sees: the upstream index, and the one platform the mirror holds.
        assert inspect_raw(f"{host}/coreos/etcd:multi") == upstream_index
        inspected = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{host}/coreos/etcd:multi"))
        assert inspected["Digest"] == built_images.index.digest and inspected["Architecture"] == "amd64"

        second_root = tmp_path / "team-mirror"
        again = lab("mirror", "image", "fetch", f"{host}/coreos/etcd:multi", "--root", second_root, "--json")
        assert again.returncode == 0, again.stderr + "\n".join(served.lines[-20:])
        doc = again.json()
        assert doc["image"]["digest"] == built_images.index.digest and doc["platforms"] == ["linux/amd64"]
        assert doc["source"] == f"{host}/coreos/etcd:multi@{built_images.index.digest}"
    first_store, second_store = ImageStore(mirror_root), ImageStore(second_root)
    needed = first_store.required_blobs(first_store.images()[0].descriptor)
    assert [b.digest for b in second_store.required_blobs(second_store.images()[0].descriptor)] == [
        b.digest for b in needed
    ]
    for blob in needed:
        assert second_store.read_blob(blob.digest) == first_store.read_blob(blob.digest)
