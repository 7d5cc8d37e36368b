"""`lab mirror verify` and `lab mirror list` over the image store: every blob re-hashed, what each image needs,
damage reported (exit 1), leftovers noted; images listed beside the boxes."""

from __future__ import annotations

import json
from pathlib import Path

from harness.cli import lab

from coreos_lab.errors import ExitCode
from coreos_lab.mirror.images.manifests import OCI_MANIFEST, Descriptor
from coreos_lab.mirror.images.store import ImageStore


def add_image(root: Path, name: str = "coreos/etcd:v3.5.16", layer: bytes = b"layer bytes") -> Descriptor:
    store = ImageStore(root)
    config = b'{"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}'
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": store.write_blob(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": store.write_blob(layer),
                    "size": len(layer),
                }
            ],
        }
    ).encode()
    descriptor = Descriptor(OCI_MANIFEST, store.write_blob(manifest), len(manifest))
    repository, _, tag = name.rpartition(":")
    store.tag_image(repository, tag, descriptor, source="registry.example/coreos/etcd:v3.5.16", platforms="all")
    return descriptor


def verify(root: Path):  # type: ignore[no-untyped-def]
    return lab("mirror", "verify", "--root", root, "--json")


def layer_of(root: Path, descriptor: Descriptor) -> Descriptor:
    return ImageStore(root).manifest(descriptor).layers[0]  # type: ignore[union-attr]


def test_a_sound_store_verifies(mirror_root: Path) -> None:
    add_image(mirror_root)
    run = verify(mirror_root)
    assert run.returncode == 0, run.stdout
    (finding,) = run.json()["findings"]
    assert finding["status"] == "ok" and finding["image"] == "coreos/etcd:v3.5.16" and "3 blobs" in finding["detail"]
    human = lab("mirror", "verify", "--root", mirror_root)
    assert "ok                coreos/etcd:v3.5.16" in human.stderr and "1 checked, 0 failed" in human.stderr


def test_a_changed_blob_is_a_mismatch_naming_its_image(mirror_root: Path) -> None:
    descriptor = add_image(mirror_root)
    add_image(mirror_root, "coreos/etcd:latest")  # the same image under a second tag
    path = ImageStore(mirror_root).blob_path(layer_of(mirror_root, descriptor).digest)
    path.write_bytes(b"layer bytez")
    run = verify(mirror_root)
    assert run.returncode == ExitCode.ERROR
    (bad,) = [f for f in run.json()["findings"] if f["status"] != "ok"]
    assert bad["status"] == "sha256 mismatch" and bad["path"] == str(path)
    assert bad["image"] == "coreos/etcd:latest, coreos/etcd:v3.5.16"
    assert f"expected sha256:{path.name}" in bad["detail"]
    assert [f["status"] for f in run.json()["findings"]].count("ok") == 0  # neither image is sound


def test_an_unreadable_blob_names_its_image(mirror_root: Path) -> None:
    descriptor = add_image(mirror_root)
    path = ImageStore(mirror_root).blob_path(layer_of(mirror_root, descriptor).digest)
    path.unlink()
    path.mkdir()  # cannot be read, even by root
    run = verify(mirror_root)
    assert run.returncode == ExitCode.ERROR
    (bad,) = [f for f in run.json()["findings"] if f["status"] == "unreadable blob"]
    assert bad["path"] == str(path) and bad["image"] == "coreos/etcd:v3.5.16" and bad["box"] is None


def test_missing_blobs_and_damaged_catalogs_and_manifests_fail(mirror_root: Path, tmp_path: Path) -> None:
    descriptor = add_image(mirror_root)
    store = ImageStore(mirror_root)
    layer = layer_of(mirror_root, descriptor)
    store.blob_path(layer.digest).unlink()
    run = verify(mirror_root)
    assert run.returncode == ExitCode.ERROR
    (missing,) = [f for f in run.json()["findings"] if f["status"] != "ok"]
    assert missing["status"] == "blob missing" and missing["path"] == str(store.blob_path(layer.digest))
    assert missing["detail"] == "coreos/etcd:v3.5.16 needs it"

    store.index_path.write_text('{"manifests": [{"digest": "nope"}]}')
    run = verify(mirror_root)
    assert run.returncode == ExitCode.ERROR
    statuses = {f["status"] for f in run.json()["findings"]}
    assert "damaged catalog" in statuses

    other = tmp_path / "other"
    manifest = add_image(other)
    ImageStore(other).blob_path(manifest.digest).write_text("{ not json")
    run = verify(other)
    assert run.returncode == ExitCode.ERROR
    statuses = {f["status"] for f in run.json()["findings"]}
    assert {"damaged manifest", "sha256 mismatch"} <= statuses


def test_leftovers_are_notes(mirror_root: Path) -> None:
    add_image(mirror_root)
    store = ImageStore(mirror_root)
    orphan = store.write_blob(b"a layer of a refused fetch")
    part = store.blob_path(orphan).with_name("0" * 64 + ".part")
    part.write_bytes(b"half")
    run = verify(mirror_root)
    assert run.returncode == 0, run.stdout
    notes = {f["status"]: f for f in run.json()["findings"] if f["status"] != "ok"}
    assert notes["unreferenced blob"]["path"] == str(store.blob_path(orphan))
    assert notes["partial download"]["path"] == str(part) and "4 bytes" in notes["partial download"]["detail"]
    assert run.json()["checked"] == 1


def test_list_shows_images_after_the_boxes(mirror_root: Path) -> None:
    descriptor = add_image(mirror_root)
    listed = lab("mirror", "list", "--root", mirror_root, "--json", "--base-url", "http://10.0.2.2:8080")
    assert listed.returncode == 0, listed.stderr
    doc = listed.json()
    assert doc["boxes"] == []
    (image,) = doc["images"]
    assert image["repository"] == "coreos/etcd" and image["tag"] == "v3.5.16"
    assert image["digest"] == descriptor.digest and image["platforms"] == "all"
    assert image["pull"] == "10.0.2.2:8080/coreos/etcd:v3.5.16"
    assert image["blob_bytes"] == sum(b.size for b in ImageStore(mirror_root).required_blobs(descriptor))
    human = lab("mirror", "list", "--root", mirror_root, "--base-url", "http://10.0.2.2:8080")
    assert f"no boxes in {mirror_root}" in human.stderr
    header, row = human.stdout.splitlines()
    assert header.split() == ["image", "digest", "platforms", "size", "pull", "source"]
    assert row.split()[0] == "coreos/etcd:v3.5.16" and "10.0.2.2:8080/coreos/etcd:v3.5.16" in row
