"""`lab mirror image fetch` from a real registry: Debian's docker-registry on 127.0.0.1, seeded by skopeo with
images the tests build (tests/harness/oci_images.py), checked with skopeo against the source and the store."""

from __future__ import annotations

import base64
import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import processes
from harness.cli import lab, start_lab
from harness.oci_images import MULTI, SINGLE, BuiltImages, built_images, digest_of, inspect_raw, seed, skopeo
from harness.ports import free_port
from harness.registry import (
    BlobStorage,
    Credentials,
    Registry,
    RegistryProxy,
    TokenServer,
    registry,
    seed_test_images,
)
from harness.waiting import wait_until

from coreos_lab.errors import ExitCode
from coreos_lab.mirror.images.store import ImageStore

__all__ = ["built_images"]  # the fixture, imported for this module's tests

pytestmark = [pytest.mark.integration, pytest.mark.registry]

ALICE = Credentials("alice", "wonderland")


@pytest.fixture
def upstream(tmp_path: Path, built_images: BuiltImages) -> Iterator[Registry]:
    """An open registry holding coreos/etcd:v3.5.16 and the two-platform coreos/etcd:multi."""
    with registry(tmp_path / "registry") as running:
        seed_test_images(running, built_images)
        yield running


def fetch(root: Path, reference: str, *args: str, env: dict[str, str] | None = None, input: str | None = None):  # type: ignore[no-untyped-def]
    return lab("mirror", "image", "fetch", reference, "--root", root, "--json", *args, env=env, input=input)


def blob_files(directory: Path) -> dict[str, bytes]:
    found = directory / "blobs" / "sha256"
    return {p.name: p.read_bytes() for p in found.iterdir() if not p.name.endswith(".part")} if found.is_dir() else {}


def skopeo_copy_from_store(root: Path, name: str, destination: Path, *, all_platforms: bool = False) -> None:
    """What any OCI tool does with the store: copy an image out of it (skopeo reads every blob it copies)."""
    skopeo("copy", *(["--all"] if all_platforms else []), f"oci:{root}/images:{name}", f"oci:{destination}:{name}")


# -- the happy paths ------------------------------------------------------------------------------------


def test_fetch_stores_the_image_as_the_registry_has_it(mirror_root: Path, upstream: Registry, tmp_path: Path) -> None:
    run = fetch(mirror_root, f"{upstream.host}/coreos/etcd:v3.5.16")
    assert run.returncode == 0, run.stderr
    doc = run.json()
    upstream_manifest = inspect_raw(f"{upstream.host}/coreos/etcd:v3.5.16")
    assert doc["action"] == "added"
    assert doc["image"]["repository"] == "coreos/etcd" and doc["image"]["tag"] == "v3.5.16"
    assert doc["image"]["digest"] == digest_of(upstream_manifest)
    assert doc["source"] == f"{upstream.host}/coreos/etcd:v3.5.16@{digest_of(upstream_manifest)}"
    assert doc["platforms"] == ["linux/amd64"]
    assert doc["downloaded"]["blobs"] == 3 and doc["reused"] == {"blobs": 0, "bytes": 0}

    store = ImageStore(mirror_root)
    assert store.read_blob(doc["image"]["digest"]) == upstream_manifest
    # Standard tools read the store as the OCI layout it is.
    inspected = json.loads(skopeo("inspect", f"oci:{mirror_root}/images:coreos/etcd:v3.5.16"))
    assert inspected["Digest"] == digest_of(upstream_manifest)
    assert inspected["Layers"] == [layer["digest"] for layer in json.loads(upstream_manifest)["layers"]]
    copied = tmp_path / "copied"
    skopeo_copy_from_store(mirror_root, "coreos/etcd:v3.5.16", copied)
    for name, data in blob_files(copied).items():
        assert data == store.read_blob(f"sha256:{name}")
    assert set(blob_files(copied)) == set(blob_files(store.dir))

    again = fetch(mirror_root, f"{upstream.host}/coreos/etcd:v3.5.16")
    assert again.returncode == 0, again.stderr
    assert again.json()["action"] == "unchanged" and again.json()["downloaded"]["blobs"] == 0
    human = lab("mirror", "image", "fetch", f"{upstream.host}/coreos/etcd:v3.5.16", "--root", mirror_root)
    assert "coreos/etcd:v3.5.16 is already in the mirror" in human.stderr and human.stdout == ""


def test_a_multi_platform_image_keeps_its_index_and_takes_the_platforms_asked_for(
    mirror_root: Path, upstream: Registry, built_images: BuiltImages, tmp_path: Path
) -> None:
    reference = f"{upstream.host}/coreos/etcd:multi"
    index = inspect_raw(reference)
    run = fetch(mirror_root, reference)
    assert run.returncode == 0, run.stderr
    doc = run.json()
    # The index is kept as the registry has it (its digest is the image's), with the default platform's image only.
    assert doc["image"]["digest"] == digest_of(index) == built_images.index.digest
    assert doc["image"]["platforms"] == "linux/amd64" and doc["platforms"] == ["linux/amd64"]
    store = ImageStore(mirror_root)
    assert store.has_blob(built_images.amd64.digest) and not store.has_blob(built_images.arm64.digest)
    inspected = json.loads(skopeo("inspect", f"oci:{mirror_root}/images:coreos/etcd:multi"))
    assert inspected["Architecture"] == "amd64"

    every = fetch(mirror_root, reference, "--all-platforms")
    assert every.returncode == 0, every.stderr
    doc = every.json()
    assert doc["action"] == "updated" and doc["image"]["platforms"] == "all"
    assert doc["platforms"] == ["linux/amd64", "linux/arm64/v8"]
    # The arm64 image shares the etcd layer with the amd64 one: fetched once, reused now.
    assert doc["reused"]["blobs"] == 3 and doc["downloaded"]["blobs"] == 2
    arm64 = json.loads(inspect_raw(f"{upstream.host}/coreos/etcd@{built_images.arm64.digest}"))
    for blob in (arm64["config"], *arm64["layers"]):
        assert store.has_blob(blob["digest"])
    copied = tmp_path / "copied"
    skopeo_copy_from_store(mirror_root, "coreos/etcd:multi", copied, all_platforms=True)
    assert blob_files(copied) == {n: store.read_blob(f"sha256:{n}") for n in blob_files(copied)}
    (entry,) = json.loads((copied / "index.json").read_text())["manifests"]
    assert entry["digest"] == built_images.index.digest  # the index itself, byte for byte
    assert (copied / "blobs" / "sha256" / entry["digest"].removeprefix("sha256:")).read_bytes() == index


def test_platform_choice(mirror_root: Path, upstream: Registry, built_images: BuiltImages) -> None:
    run = fetch(mirror_root, f"{upstream.host}/coreos/etcd:multi", "--platform", "linux/arm64")
    assert run.returncode == 0, run.stderr
    assert run.json()["platforms"] == ["linux/arm64/v8"]  # arm64 without a variant is arm64/v8
    assert ImageStore(mirror_root).has_blob(built_images.arm64.digest)

    missing = fetch(mirror_root, f"{upstream.host}/coreos/etcd:multi", "--platform", "linux/s390x")
    assert missing.returncode == ExitCode.USAGE
    assert "no image for platform linux/s390x (it has: linux/amd64, linux/arm64/v8)" in missing.stderr
    # A single-platform image is for the platform its config names.
    wrong = fetch(mirror_root, f"{upstream.host}/coreos/etcd:v3.5.16", "--platform", "linux/arm64")
    assert wrong.returncode == ExitCode.USAGE
    assert "is an image for linux/amd64 only, not for linux/arm64" in wrong.stderr
    assert ImageStore(mirror_root).lookup("coreos/etcd", "v3.5.16") is None
    # Stored already: still not "unchanged" for a platform it is not for.
    assert fetch(mirror_root, f"{upstream.host}/coreos/etcd:v3.5.16").returncode == 0
    again = fetch(mirror_root, f"{upstream.host}/coreos/etcd:v3.5.16", "--platform", "linux/arm64")
    assert again.returncode == ExitCode.USAGE, again.stdout
    assert "is an image for linux/amd64 only, not for linux/arm64" in again.stderr
    both = fetch(mirror_root, f"{upstream.host}/coreos/etcd:multi", "--platform", "linux/amd64", "--all-platforms")
    assert both.returncode == ExitCode.USAGE and "exclude each other" in both.stderr


def test_a_pinned_digest_is_checked(mirror_root: Path, upstream: Registry, built_images: BuiltImages) -> None:
    pinned = fetch(mirror_root, f"{upstream.host}/coreos/etcd:v3.5.16@{built_images.single.digest}")
    assert pinned.returncode == 0, pinned.stderr
    assert pinned.json()["image"]["digest"] == built_images.single.digest
    # A digest the registry does not have is a manifest it does not know (its JSON error code is named).
    unknown = fetch(mirror_root, f"{upstream.host}/coreos/etcd@sha256:{'0' * 64}")
    assert unknown.returncode == ExitCode.USAGE
    assert "MANIFEST_UNKNOWN" in unknown.stderr


def test_bad_references_and_unreachable_registries(mirror_root: Path, upstream: Registry, tmp_path: Path) -> None:
    unknown = fetch(mirror_root, f"{upstream.host}/coreos/etcd:v0.0.0")
    assert unknown.returncode == ExitCode.USAGE
    assert f"http://{upstream.host}/v2/coreos/etcd/manifests/v0.0.0" in unknown.stderr
    assert "MANIFEST_UNKNOWN" in unknown.stderr
    invalid = fetch(mirror_root, "Quay.io/UPPER/case")
    assert invalid.returncode == ExitCode.USAGE and "'Quay.io/UPPER/case'" in invalid.stderr
    closed = fetch(mirror_root, f"127.0.0.1:{free_port()}/coreos/etcd:v3.5.16")
    assert closed.returncode == ExitCode.ERROR and "cannot reach the registry" in closed.stderr
    assert not (mirror_root / "images" / "index.json").exists()


def test_a_tag_that_now_names_another_image_needs_force(
    mirror_root: Path, upstream: Registry, built_images: BuiltImages
) -> None:
    seed(built_images.source(SINGLE), upstream.host, "coreos/etcd:moving")
    assert fetch(mirror_root, f"{upstream.host}/coreos/etcd:moving").returncode == 0
    seed(built_images.source(MULTI), upstream.host, "coreos/etcd:moving", all_platforms=True)
    refused = fetch(mirror_root, f"{upstream.host}/coreos/etcd:moving")
    assert refused.returncode == ExitCode.USAGE
    assert f"coreos/etcd:moving is already in the mirror as {built_images.single.digest}" in refused.stderr
    assert built_images.index.digest in refused.stderr and "--force" in refused.stderr
    assert ImageStore(mirror_root).lookup("coreos/etcd", "moving").digest == built_images.single.digest  # type: ignore[union-attr]
    forced = fetch(mirror_root, f"{upstream.host}/coreos/etcd:moving", "--force")
    assert forced.returncode == 0, forced.stderr
    assert forced.json()["action"] == "replaced" and forced.json()["image"]["digest"] == built_images.index.digest


# -- authentication -------------------------------------------------------------------------------------


def test_basic_auth_from_options_stdin_and_docker_config(
    mirror_root: Path, tmp_path: Path, built_images: BuiltImages
) -> None:
    with registry(tmp_path / "registry", htpasswd=ALICE) as running:
        seed_test_images(running, built_images)
        reference = f"{running.host}/coreos/etcd:v3.5.16"
        empty_config = tmp_path / "no-docker-config"
        empty_config.mkdir()
        anonymous = fetch(mirror_root, reference, env={"DOCKER_CONFIG": str(empty_config)})
        assert anonymous.returncode == ExitCode.USAGE
        assert "needs a user name and password" in anonymous.stderr and "--username" in anonymous.stderr

        wrong = fetch(mirror_root, reference, "--username", "alice", "--password", "nope")
        assert wrong.returncode == ExitCode.USAGE and "HTTP 401" in wrong.stderr

        ok = fetch(mirror_root, reference, "--username", "alice", "--password", ALICE.password)
        assert ok.returncode == 0, ok.stderr
        assert ok.json()["image"]["digest"] == built_images.single.digest

        stdin = fetch(
            mirror_root, f"{running.host}/coreos/etcd:multi", "--username", "alice", "--password-stdin",
            input=ALICE.password + "\n",
        )  # fmt: skip
        assert stdin.returncode == 0, stdin.stderr

        # `docker login` leaves base64 user:password under auths[host].auth in $DOCKER_CONFIG/config.json.
        docker_config = tmp_path / "docker"
        docker_config.mkdir()
        auth = base64.b64encode(ALICE.creds.encode()).decode()
        (docker_config / "config.json").write_text(json.dumps({"auths": {running.host: {"auth": auth}}}))
        other_root = tmp_path / "other-root"
        from_config = fetch(other_root, reference, env={"DOCKER_CONFIG": str(docker_config)})
        assert from_config.returncode == 0, from_config.stderr
        assert from_config.json()["image"]["digest"] == built_images.single.digest


def test_bearer_tokens_from_the_challenge_realm(mirror_root: Path, tmp_path: Path, built_images: BuiltImages) -> None:
    with TokenServer(tmp_path) as tokens, registry(tmp_path / "registry", token=tokens) as running:
        seed_test_images(running, built_images)
        tokens.requests.clear()
        # The first token the client gets has expired: the registry's 401 makes it take a new one and go on.
        tokens.expired_first = 1
        run = fetch(mirror_root, f"{running.host}/coreos/etcd:multi", "--all-platforms")
        assert run.returncode == 0, run.stderr + running.log()
        assert run.json()["image"]["digest"] == built_images.index.digest
        assert len(tokens.requests) == 2
        for asked in tokens.requests:
            assert asked["service"] == "coreos-lab-test-registry"
            assert asked["scope"] == "repository:coreos/etcd:pull"
            assert asked["authorization"] is None  # anonymous: no credentials known


def test_bearer_tokens_for_credentials(mirror_root: Path, tmp_path: Path, built_images: BuiltImages) -> None:
    with (
        TokenServer(tmp_path, users={ALICE.username: ALICE.password}) as tokens,
        registry(tmp_path / "registry", token=tokens) as running,
    ):
        seed_test_images(running, built_images)
        tokens.requests.clear()
        reference = f"{running.host}/coreos/etcd:v3.5.16"
        anonymous = fetch(mirror_root, reference, env={"DOCKER_CONFIG": str(tmp_path)})
        assert anonymous.returncode == ExitCode.USAGE and "gives no anonymous token" in anonymous.stderr
        ok = fetch(mirror_root, reference, "--username", ALICE.username, "--password", ALICE.password)
        assert ok.returncode == 0, ok.stderr
        assert tokens.requests[-1]["authorization"] == "Basic " + base64.b64encode(ALICE.creds.encode()).decode()


def test_a_blob_redirected_to_storage_gets_no_credentials(
    mirror_root: Path, tmp_path: Path, built_images: BuiltImages
) -> None:
    with (
        registry(tmp_path / "registry", htpasswd=ALICE) as running,
        RegistryProxy(running) as proxy,
        BlobStorage(running) as storage,
    ):
        seed_test_images(running, built_images)
        proxy.redirect_blobs_to = storage.url
        run = fetch(
            mirror_root, f"{proxy.host}/coreos/etcd:v3.5.16", "--username", ALICE.username, "--password", ALICE.password
        )
        assert run.returncode == 0, run.stderr
        assert sorted(r.path.strip("/") for r in storage.requests) == sorted(
            b.digest for b in ImageStore(mirror_root).required_blobs(ImageStore(mirror_root).images()[0].descriptor)[1:]
        )
        assert all("Authorization" not in r.headers for r in storage.requests)
        assert any("Authorization" in r.headers for r in proxy.requests if "/manifests/" in r.path)


def test_a_loopback_registry_over_https(mirror_root: Path, tmp_path: Path, built_images: BuiltImages) -> None:
    """Plain HTTP is asked first and answered with a 400 by this HTTPS-only registry, which is then asked over
    HTTPS; a loopback registry's certificate is not checked (Docker's default for loopback)."""
    with registry(tmp_path / "registry", tls=True) as running:
        seed_test_images(running, built_images)
        run = fetch(mirror_root, f"{running.host}/coreos/etcd:v3.5.16")
        assert run.returncode == 0, run.stderr
        assert run.json()["image"]["digest"] == built_images.single.digest


def test_proxy_variables_are_honoured(mirror_root: Path, upstream: Registry) -> None:
    with RegistryProxy(upstream) as proxy:
        env = {"http_proxy": proxy.url, "HTTP_PROXY": proxy.url, "no_proxy": "", "NO_PROXY": ""}
        run = fetch(mirror_root, f"{upstream.host}/coreos/etcd:v3.5.16", env=env)
        assert run.returncode == 0, run.stderr
        assert any(r.target == f"http://{upstream.host}/v2/coreos/etcd/manifests/v3.5.16" for r in proxy.requests)


# -- refusals and interruptions -------------------------------------------------------------------------


def test_a_tampered_blob_is_refused_and_the_catalog_unchanged(
    mirror_root: Path, upstream: Registry, built_images: BuiltImages
) -> None:
    assert fetch(mirror_root, f"{upstream.host}/coreos/etcd:multi", "--platform", "linux/arm64").returncode == 0
    store = ImageStore(mirror_root)
    catalog = store.index_path.read_bytes()
    manifest = json.loads(inspect_raw(f"{upstream.host}/coreos/etcd:v3.5.16"))
    layer = manifest["layers"][1]["digest"]  # the small one: not in the mirror yet (the arm64 image's differs)
    data = bytearray(upstream.blob_data(layer).read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes: what the registry now serves under the old digest
    upstream.blob_data(layer).write_bytes(bytes(data))
    tampered = digest_of(bytes(data))

    run = fetch(mirror_root, f"{upstream.host}/coreos/etcd:v3.5.16")
    assert run.returncode == ExitCode.USAGE
    assert f"blob {layer}" in run.stderr and f"its sha256 is {tampered}" in run.stderr
    assert "refused, nothing stored" in run.stderr
    assert not store.has_blob(layer) and not store.has_blob(tampered)
    assert store.part_paths() == []  # nothing left to "resume" into the wrong blob
    assert store.index_path.read_bytes() == catalog
    assert store.lookup("coreos/etcd", "v3.5.16") is None
    verified = lab("mirror", "verify", "--root", mirror_root, "--json")
    assert verified.returncode == 0, verified.stdout


def test_a_cut_download_resumes_with_range(mirror_root: Path, upstream: Registry, built_images: BuiltImages) -> None:
    manifest = json.loads(inspect_raw(f"{upstream.host}/coreos/etcd:v3.5.16"))
    big = max(manifest["layers"], key=lambda layer: layer["size"])
    cut = big["size"] // 3
    with RegistryProxy(upstream) as proxy:
        proxy.cut_after[big["digest"]] = cut
        reference = f"{proxy.host}/coreos/etcd:v3.5.16"
        first = fetch(mirror_root, reference)
        assert first.returncode == ExitCode.ERROR
        assert "was cut" in first.stderr and "run the same command again to resume" in first.stderr
        store = ImageStore(mirror_root)
        assert store.lookup("coreos/etcd", "v3.5.16") is None
        # Other blobs' downloads may have been stopped midway too (they run side by side): parts to resume as well.
        parts = {p.name: p.stat().st_size for p in store.part_paths()}
        assert parts[big["digest"].removeprefix("sha256:") + ".part"] == cut

        second = fetch(mirror_root, reference)
        assert second.returncode == 0, second.stderr
        assert second.json()["resumed_bytes"] == sum(parts.values())  # the big blob's `cut` and the others' parts
        assert proxy.blob_requests(big["digest"])[-1].headers.get("Range") == f"bytes={cut}-"
        assert store.part_paths() == []
        assert digest_of(store.read_blob(big["digest"])) == big["digest"]


def test_an_interrupted_fetch_stops_at_once_and_resumes(
    mirror_root: Path, upstream: Registry, built_images: BuiltImages
) -> None:
    manifest = json.loads(inspect_raw(f"{upstream.host}/coreos/etcd:v3.5.16"))
    big = max(manifest["layers"], key=lambda layer: layer["size"])
    store = ImageStore(mirror_root)
    part = store.blob_path(big["digest"]).with_name(big["digest"].removeprefix("sha256:") + ".part")
    with RegistryProxy(upstream) as proxy:
        proxy.hold_after[big["digest"]] = 1 << 20
        process = start_lab("mirror", "image", "fetch", f"{proxy.host}/coreos/etcd:v3.5.16", "--root", mirror_root)
        try:
            wait_until(lambda: part.is_file() and part.stat().st_size == 1 << 20, "the held download's first MiB")
            process.send_signal(signal.SIGINT)
            _, stderr = process.communicate(timeout=60)  # the held download thread is stopped, not waited for
            assert process.returncode == ExitCode.INTERRUPTED, stderr
        finally:
            processes.kill(process)
        assert store.lookup("coreos/etcd", "v3.5.16") is None and part.stat().st_size == 1 << 20
        del proxy.hold_after[big["digest"]]
        proxy.release.set()
        again = fetch(mirror_root, f"{proxy.host}/coreos/etcd:v3.5.16")
        assert again.returncode == 0, again.stderr
        # Other blobs stopped at the same moment are resumed too (a small one may even be complete, uncommitted).
        assert again.json()["resumed_bytes"] >= 1 << 20
        assert proxy.blob_requests(big["digest"])[-1].headers.get("Range") == f"bytes={1 << 20}-"


def test_a_part_that_is_already_the_whole_blob_is_committed_without_asking(
    mirror_root: Path, tmp_path: Path, upstream: Registry, built_images: BuiltImages
) -> None:
    """A fetch stopped between a blob's last byte and its commit leaves a complete part. The next fetch commits it
    without a request: asking for the range past its end is what Distribution 2.8 answers with a broken 416
    (its Content-Length is the blob's, over a short error body). A part as long as the blob but not it starts
    over from the first byte."""
    manifest = json.loads(inspect_raw(f"{upstream.host}/coreos/etcd:v3.5.16"))
    layers = sorted(manifest["layers"], key=lambda layer: layer["size"])
    small, big = layers[0], layers[-1]
    assert small["digest"] != big["digest"]
    with RegistryProxy(upstream) as proxy:
        reference = f"{proxy.host}/coreos/etcd:v3.5.16"
        other = ImageStore(tmp_path / "other")
        assert fetch(other.dir.parent, reference).returncode == 0
        store = ImageStore(mirror_root)
        part = store.blob_path(small["digest"]).with_suffix(".part")
        part.parent.mkdir(parents=True)
        part.write_bytes(other.read_blob(small["digest"]))
        store.blob_path(big["digest"]).with_suffix(".part").write_bytes(b"\0" * big["size"])
        asked = len(proxy.blob_requests(small["digest"]))

        again = fetch(mirror_root, reference)
        assert again.returncode == 0, again.stderr
        assert len(proxy.blob_requests(small["digest"])) == asked  # committed from the part, never asked for
        assert "Range" not in proxy.blob_requests(big["digest"])[-1].headers  # the wrong part started over
        assert store.part_paths() == []
        assert all(digest_of(store.read_blob(d)) == d for d in (small["digest"], big["digest"]))
