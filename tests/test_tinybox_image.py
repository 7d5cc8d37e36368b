"""The tiny box's Flatcar path, outside a VM: what its applier reads from rendered Flatcar user-data, and its
puller (tinybox/pull-image) run by the host's busybox — the guest's — with only busybox's applets on PATH,
against Debian's Distribution registry on 127.0.0.1 (harness/registry.py), seeded with skopeo from images the
tests build, and against `lab mirror serve`.

The VM end-to-end (tests/test_libvirt_e2e.py, the Flatcar smoke) runs the same scripts in the guest, against
the mirror `lab` serves, and runs etcd from the pulled root.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.cli import lab
from harness.etcd_image import (
    ETCD_IN_IMAGE,
    TestImage,
    etcd_image,
    image,
    index_of,
    push,
    put_in_store,
    small_image,
    write_oci_layout,
)
from harness.labs import mirror_with_boxes, write_lab
from harness.libvirt_box import GUEST_FILES
from harness.registry import Registry, registry

pytestmark = pytest.mark.integration

APPLIER = GUEST_FILES / "apply-user-data"
PULLER = GUEST_FILES / "pull-image"


@pytest.fixture(scope="module")
def guest_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A PATH of busybox's applets alone, as in the guest (busybox-static is the box's busybox)."""
    busybox = shutil.which("busybox")
    assert busybox, "busybox (busybox-static) is a test dependency (scripts/system-packages.sh)"
    bin_dir = tmp_path_factory.mktemp("guest-bin")
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()
    for applet in applets:
        (bin_dir / applet).symlink_to(busybox)
    return str(bin_dir)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with registry(tmp_path_factory.mktemp("registry")) as running:
        yield running


def push_image(upstream: Registry, base: Path, img: TestImage, target: str) -> None:
    layout = write_oci_layout(base / "layout", img.manifest, list(img.blobs[1:]), "x")
    push(layout, "x", upstream.host, target)


def pull(guest_path: str, image_ref: str, dest: Path, *allowed: str) -> subprocess.CompletedProcess[str]:
    options = [arg for host in allowed for arg in ("--insecure-registry", host)]
    return subprocess.run(
        [f"{guest_path}/sh", str(PULLER), *options, image_ref, str(dest)],
        capture_output=True,
        text=True,
        env={"PATH": guest_path},
        timeout=300,
    )


def image_settings(guest_path: str, user_data: Path) -> dict[str, list[str]]:
    """What the applier reads from a user-data file: the image etcd runs from, the plain-HTTP registries."""
    out = subprocess.run(
        [f"{guest_path}/sh", str(APPLIER), "--image", str(user_data)],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": guest_path},
    ).stdout
    settings: dict[str, list[str]] = {}
    for line in out.splitlines():
        key, _, value = line.partition("=")
        settings.setdefault(key, []).append(value)
    return settings


def run_from_root(rootfs: Path, *args: str) -> str:
    """Run the image's etcd with the image's own C library and loader (a chroot, without needing root)."""
    loader = rootfs / "lib64/ld-linux-x86-64.so.2"
    argv = [
        str(loader),
        "--library-path",
        str(rootfs / "lib/x86_64-linux-gnu"),
        str(rootfs / ETCD_IN_IMAGE.lstrip("/")),
    ]
    return subprocess.run([*argv, *args], capture_output=True, text=True, check=True, timeout=60).stdout


def render_flatcar(tmp_path: Path, mirror_url: str, **settings: object) -> Path:
    """A rendered Flatcar lab whose guests reach the mirror at `mirror_url` (guest host 127.0.0.1)."""
    root = tmp_path / "boxes"
    root.mkdir(exist_ok=True)
    mirror_with_boxes(root)
    mirror = {"url": mirror_url, "guest_host": "127.0.0.1"}
    lab_dir = write_lab(tmp_path / "lab", root, distro="flatcar", version="3815.2.0", mirror=mirror, **settings)
    run = lab("render", lab_dir)
    assert run.returncode == 0, run.stderr
    return lab_dir / "user-data" / "core-01.yaml"


@pytest.mark.registry
def test_etcd_pulled_from_where_the_rendered_user_data_says_runs(
    tmp_path: Path, guest_path: str, upstream: Registry
) -> None:
    """The whole Flatcar path but the VM: rendered drop-ins → image and allowed registry → pull → etcd runs."""
    img = etcd_image()
    push_image(upstream, tmp_path, img, "coreos/etcd:v3.5.16")
    user_data = render_flatcar(tmp_path, upstream.url)
    settings = image_settings(guest_path, user_data)
    assert settings == {"IMAGE": [f"{upstream.host}/coreos/etcd:v3.5.16"], "INSECURE": [upstream.host]}

    pulled = pull(guest_path, settings["IMAGE"][0], tmp_path / "image", *settings["INSECURE"])
    assert pulled.returncode == 0, pulled.stderr
    rootfs = tmp_path / "image" / "rootfs"
    assert (rootfs / ETCD_IN_IMAGE.lstrip("/")).read_bytes() == Path("/usr/bin/etcd").read_bytes()
    assert run_from_root(rootfs, "--version").startswith("etcd Version: 3.4.")
    assert (tmp_path / "image" / "image").read_text().splitlines() == [settings["IMAGE"][0], img.manifest.digest]
    assert not (tmp_path / "image" / "blobs").exists()  # the blobs are gone once unpacked


def test_etcd_pulled_from_labs_own_mirror_runs(tmp_path: Path, guest_path: str) -> None:
    """The same pull from the server `lab up` runs for the guests (its registry at /v2/), the image put in the
    store through the store's API: HTTP/1.0 from busybox's nc, manifest and blobs as the guest gets them."""
    from coreos_lab.server import EmbeddedServer

    img = etcd_image()
    root = tmp_path / "boxes"
    root.mkdir()
    put_in_store(root, img, "coreos/etcd", "v3.5.16")
    with EmbeddedServer(root, port=0) as server:
        user_data = render_flatcar(tmp_path, server.url)
        settings = image_settings(guest_path, user_data)
        host = server.url.removeprefix("http://")
        assert settings == {"IMAGE": [f"{host}/coreos/etcd:v3.5.16"], "INSECURE": [host]}
        pulled = pull(guest_path, settings["IMAGE"][0], tmp_path / "image", *settings["INSECURE"])
    assert pulled.returncode == 0, pulled.stderr
    assert run_from_root(tmp_path / "image" / "rootfs", "--version").startswith("etcd Version: 3.4.")
    assert (tmp_path / "image" / "image").read_text().splitlines()[1] == img.manifest.digest


def test_the_applier_reads_the_unit_default_and_nothing_for_coreos(tmp_path: Path, guest_path: str) -> None:
    upstream = render_flatcar(tmp_path, "http://127.0.0.1:8080", etcd={"image_source": "upstream"})
    assert image_settings(guest_path, upstream) == {"IMAGE": ["quay.io/coreos/etcd:v3.5.16"]}  # etcd-member's
    own = tmp_path / "own.yaml"  # the way Flatcar's docs write the drop-in, quotes and all
    own.write_text(
        "#cloud-config\ncoreos:\n  units:\n    - name: docker.service\n      drop-ins:\n        - name: 50-r.conf\n"
        "          content: |\n            [Service]\n"
        "            Environment=DOCKER_OPTS='--insecure-registry=\"10.0.1.5:5000\" --debug'\n"
        "    - name: etcd-member.service\n      command: start\n"
    )
    assert image_settings(guest_path, own) == {"IMAGE": ["quay.io/coreos/etcd:v3.5.16"], "INSECURE": ["10.0.1.5:5000"]}
    coreos = tmp_path / "coreos.yaml"
    coreos.write_text("#cloud-config\ncoreos:\n  etcd2:\n    name: core-01\n  units:\n    - name: etcd2.service\n")
    assert image_settings(guest_path, coreos) == {}


@pytest.mark.registry
@pytest.mark.parametrize("docker", [False, True], ids=["oci-index", "docker-manifest-list"])
def test_an_index_gives_linux_amd64s_image(tmp_path: Path, guest_path: str, upstream: Registry, docker: bool) -> None:
    arm, amd = small_image("arm64", architecture="arm64"), small_image("amd64")
    index = index_of({"linux/arm64/v8": arm, "linux/amd64": amd})
    layout = write_oci_layout(tmp_path / "layout", index, [*arm.blobs, *amd.blobs], "multi")
    target = f"multi/{'docker' if docker else 'oci'}:v1"
    push(layout, "multi", upstream.host, target, all_platforms=True, docker=docker)
    pulled = pull(guest_path, f"{upstream.host}/{target}", tmp_path / "image", upstream.host)
    assert pulled.returncode == 0, pulled.stderr
    assert (tmp_path / "image/rootfs/etc/hello").read_text() == "amd64"
    kind = (
        "application/vnd.docker.distribution.manifest.v2+json"
        if docker
        else "application/vnd.oci.image.manifest.v1+json"
    )
    assert f'"mediaType": "{kind}"' in (tmp_path / "image/manifest").read_text().replace('":"', '": "')


@pytest.mark.registry
def test_an_image_pinned_by_digest(tmp_path: Path, guest_path: str, upstream: Registry) -> None:
    img = small_image("pinned")
    push_image(upstream, tmp_path, img, "pinned/img:v1")
    pulled = pull(guest_path, f"{upstream.host}/pinned/img@{img.manifest.digest}", tmp_path / "image", upstream.host)
    assert pulled.returncode == 0, pulled.stderr
    assert (tmp_path / "image/rootfs/etc/hello").read_text() == "pinned"


@pytest.mark.registry
def test_whiteouts_remove_from_the_layers_below(tmp_path: Path, guest_path: str, upstream: Registry) -> None:
    img = image([
        {"/etc/hello": b"gone", "/etc/keep": b"kept", "/opt/d/a": b"gone too"},
        {"/etc/.wh.hello": b"", "/opt/d/.wh..wh..opq": b"", "/opt/d/b": b"new"},
    ])  # fmt: skip
    push_image(upstream, tmp_path, img, "whiteout/img:v1")
    pulled = pull(guest_path, f"{upstream.host}/whiteout/img:v1", tmp_path / "image", upstream.host)
    assert pulled.returncode == 0, pulled.stderr
    rootfs = tmp_path / "image/rootfs"
    assert sorted(str(p.relative_to(rootfs)) for p in rootfs.rglob("*") if p.is_file()) == ["etc/keep", "opt/d/b"]


@pytest.mark.registry
def test_a_registry_not_allowed_over_plain_http_is_refused(tmp_path: Path, guest_path: str, upstream: Registry) -> None:
    push_image(upstream, tmp_path, small_image(), "refused/img:v1")
    for allowed in [(), ("10.0.2.2:8080",)]:
        refused = pull(guest_path, f"{upstream.host}/refused/img:v1", tmp_path / "image", *allowed)
        assert refused.returncode == 1
        assert f"refusing to pull {upstream.host}/refused/img:v1: {upstream.host} is not an insecure registry" in (
            refused.stderr
        )
        assert not (tmp_path / "image").exists()
    quay = pull(guest_path, "quay.io/coreos/etcd:v3.5.16", tmp_path / "image", upstream.host)
    assert quay.returncode == 1 and "quay.io is not an insecure registry" in quay.stderr


@pytest.mark.registry
def test_a_damaged_blob_is_refused_and_nothing_is_recorded(tmp_path: Path, guest_path: str, upstream: Registry) -> None:
    img = small_image("to be damaged")
    push_image(upstream, tmp_path, img, "damaged/img:v1")
    stored = upstream.blob_data(img.layers[1].digest)
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored.write_bytes(bytes(data))
    pulled = pull(guest_path, f"{upstream.host}/damaged/img:v1", tmp_path / "image", upstream.host)
    assert pulled.returncode == 1
    assert f"layer 1 of {upstream.host}/damaged/img:v1 does not match its digest {img.layers[1].digest}" in (
        pulled.stderr
    )
    assert not (tmp_path / "image/image").exists()  # not a pulled image: the next try pulls again


@pytest.mark.registry
def test_a_missing_tag_names_the_manifest_url(tmp_path: Path, guest_path: str, upstream: Registry) -> None:
    pulled = pull(guest_path, f"{upstream.host}/coreos/etcd:v0.0.0", tmp_path / "image", upstream.host)
    assert pulled.returncode == 1
    assert f"no manifest at http://{upstream.host}/v2/coreos/etcd/manifests/v0.0.0 (HTTP 404)" in pulled.stderr


@pytest.mark.registry
def test_a_complete_pull_is_kept_like_dockers_images(tmp_path: Path, guest_path: str) -> None:
    with registry(tmp_path / "own") as own:
        push_image(own, tmp_path, small_image("kept"), "kept/img:v1")
        assert pull(guest_path, f"{own.host}/kept/img:v1", tmp_path / "image", own.host).returncode == 0
    again = pull(guest_path, f"{own.host}/kept/img:v1", tmp_path / "image", own.host)  # the registry is gone
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "image/rootfs/etc/hello").read_text() == "kept"


BOX_RUN = r"""
set -u
ip link set lo up
ip addr add 172.17.8.101/24 dev lo            # the machine's private address, as the user-data names it
mount -t tmpfs run /run && mount -t tmpfs lib /var/lib && mount -t tmpfs log /var/log  # the box's, not ours
mkdir -p /var/lib/flatcar-vagrant
"$PYTHON" -m coreos_lab mirror serve --root "$ROOT" --host 127.0.0.1 --port "$PORT" --no-live 2> "$WORK/serve.log" &
cp "$USER_DATA" /var/lib/flatcar-vagrant/vagrantfile-user-data
PATH="$GUEST_PATH" "$GUEST_PATH/sh" "$APPLIER" &
etcdctl() { /usr/bin/etcdctl --endpoints http://127.0.0.1:2379 "$@"; }
i=0
until etcdctl endpoint health > /dev/null 2>&1; do
  i=$((i + 1))
  [ $i -lt 240 ] || { echo "etcd did not come up"; cat /var/log/etcd.log "$WORK/serve.log"; exit 1; }
  sleep 0.5
done
echo "root=$(readlink "/proc/$(cat /run/etcd.pid)/root")"
echo "image=$(sed -n 2p /var/lib/etcd-image/image)"
etcdctl put lab-key lab-value > /dev/null && echo "value=$(etcdctl get lab-key --print-value-only)"
echo "data=$(ls /var/lib/etcd)"
"""


@pytest.mark.etcd
@pytest.mark.netns
def test_the_applier_runs_etcd_from_the_image_lab_mirror_serve_gave_it(tmp_path: Path, guest_path: str) -> None:
    """The box's Flatcar path for real, without a VM: in namespaces of its own (network, mounts, PIDs: whatever
    it starts ends with it), `lab mirror serve` serves the store, the box's applier reads rendered Flatcar
    user-data, pulls etcd's image from the mirror's registry, and runs etcd chrooted into it, its data dir
    mounted in. etcd answers, and the process runs in the image's root."""
    import os
    import sys

    from harness.ports import free_port

    img = etcd_image()
    root = tmp_path / "boxes"
    root.mkdir()
    put_in_store(root, img, "coreos/etcd", "v3.5.16")
    port = free_port()
    user_data = render_flatcar(tmp_path, f"http://127.0.0.1:{port}", nodes=1, discovery={"mode": "static"})
    shell = Path(guest_path) / "pull-image"  # on PATH as in the guest, run by busybox's shell as there
    shell.write_text(f"#!{os.path.realpath(Path(guest_path) / 'sh')} sh\n" + PULLER.read_text())
    shell.chmod(0o755)
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "ROOT": str(root),
        "PORT": str(port),
        "WORK": str(tmp_path),
        "USER_DATA": str(user_data),
        "GUEST_PATH": guest_path,
        "APPLIER": str(APPLIER),
    }
    run = subprocess.run(
        ["unshare", "--net", "--mount", "--pid", "--fork", "--mount-proc", "--kill-child", "sh", "-c", BOX_RUN],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    found = dict(line.split("=", 1) for line in run.stdout.splitlines() if "=" in line)
    assert found == {
        "root": "/var/lib/etcd-image/rootfs",
        "image": img.manifest.digest,
        "value": "lab-value",
        "data": "member",
    }, run.stdout + run.stderr
