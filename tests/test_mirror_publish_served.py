"""A published catalog served by real peers and read by the real Vagrant CLI (2.3.4, VAGRANT_HOME in tmp): Debian's
nginx serving a published directory with the README's config, and moto's standalone S3 server (a real S3 API on
127.0.0.1) holding a published prefix. No VirtualBox is needed: `vagrant box add` only downloads, checks and unpacks
the tiny boxes."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from harness import processes
from harness.boxes import add_box
from harness.cli import lab, start_lab
from harness.nginx import nginx_serving
from harness.s3 import S3Server, s3_server
from harness.vagrant_cli import installed_boxes, vagrant
from harness.waiting import wait_until

from coreos_lab.mirror.store import MirrorStore

pytestmark = [pytest.mark.integration]


@dataclass
class Site:
    """Where a published catalog is read from (`url`, the --base-url), and how `lab mirror publish` writes it."""

    url: str
    dest: str
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    def publish(self, store: MirrorStore, *extra: str) -> dict[str, Any]:
        run = lab(
            "mirror", "publish", self.dest, "--base-url", self.url, "--root", store.root, "--json", *self.args, *extra,
            env=self.env,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        return run.json()


@pytest.fixture
def store(mirror_root: Path) -> MirrorStore:
    store = MirrorStore(mirror_root)
    add_box(store, "coreos-stable", "1.0.0")
    add_box(store, "coreos-stable", "1.1.0")
    add_box(store, "flatcar-stable", "3815.2.0")
    return store


@pytest.fixture
def vagrant_home(tmp_path: Path) -> Path:
    home = tmp_path / "vagrant-home"
    home.mkdir()
    return home


@pytest.fixture
def nginx_site(tmp_path: Path) -> Iterator[Site]:
    root = tmp_path / "site"
    root.mkdir()
    with nginx_serving(root, tmp_path / "nginx") as nginx:
        yield Site(nginx.url, str(root))


@pytest.fixture
def s3(tmp_path: Path) -> Iterator[S3Server]:
    with s3_server(tmp_path) as server:
        yield server


@pytest.fixture
def s3_site(s3: S3Server) -> Site:
    bucket_url = s3.bucket("boxes")
    return Site(f"{bucket_url}/vagrant", "s3://boxes/vagrant", ["--endpoint-url", s3.url], s3.env)


@pytest.fixture(params=["nginx", pytest.param("s3", marks=pytest.mark.s3)])
def site(request: pytest.FixtureRequest) -> Site:
    return request.getfixturevalue(f"{request.param}_site")


# -- Vagrant against the published catalog -----------------------------------------------------------------
@pytest.mark.vagrant
def test_vagrant_adds_boxes_picks_versions_and_sees_newer_ones(
    site: Site, store: MirrorStore, vagrant_home: Path
) -> None:
    site.publish(store)
    head = requests.head(f"{site.url}/coreos-stable", headers={"Accept": "application/json"}, timeout=30)
    assert (head.status_code, head.headers["Content-Type"].split(";")[0]) == (200, "application/json")

    run = vagrant(vagrant_home, "box", "add", f"{site.url}/flatcar-stable.json")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Successfully added box 'flatcar-stable' (v3815.2.0) for 'virtualbox'" in run.stdout
    run = vagrant(vagrant_home, "box", "add", "--box-version", "1.0.0", f"{site.url}/coreos-stable")
    assert run.returncode == 0, run.stdout + run.stderr
    assert installed_boxes(vagrant_home) == [("coreos-stable", "1.0.0"), ("flatcar-stable", "3815.2.0")]

    run = vagrant(vagrant_home, "box", "outdated", "--global")
    assert "'flatcar-stable' for 'virtualbox' (v3815.2.0) is up to date" in run.stdout, run.stdout + run.stderr
    add_box(store, "flatcar-stable", "3850.0.0")
    assert "flatcar-stable/3850.0.0/virtualbox-amd64.box" in site.publish(store)["written"]
    run = vagrant(vagrant_home, "box", "outdated", "--global")
    assert "'flatcar-stable' for 'virtualbox' is outdated! Current: 3815.2.0. Latest: 3850.0.0" in run.stdout, (
        run.stdout + run.stderr
    )


@pytest.mark.vagrant
def test_a_lab_pointed_at_the_published_url_adds_its_box_from_there(
    nginx_site: Site, store: MirrorStore, vagrant_home: Path, tmp_path: Path
) -> None:
    """`lab init --mirror-url <published URL>` (static discovery: a static site has no discovery service): the
    rendered Vagrantfile's box_url is `<url>/<name>`, which nginx answers from `<name>.json`."""
    nginx_site.publish(store)
    lab_dir = tmp_path / "mylab"
    env = {"LAB_MIRROR_ROOT": str(store.root)}
    init = ["--distro", "coreos", "--mirror-url", nginx_site.url, "--discovery-mode", "static"]
    run = lab("init", lab_dir, *init, env=env)
    assert run.returncode == 0, run.stderr
    run = lab("render", lab_dir, env=env)
    assert run.returncode == 0, run.stderr
    box_url = f"{nginx_site.url}/coreos-stable"
    assert f'BOX_URL = "{box_url}"' in (lab_dir / "Vagrantfile").read_text()
    metadata = requests.get(box_url, timeout=30).json()
    assert [v["version"] for v in metadata["versions"]] == ["1.0.0", "1.1.0"]
    run = vagrant(vagrant_home, "box", "add", "--box-version", "1.1.0", box_url)
    assert run.returncode == 0, run.stdout + run.stderr
    assert installed_boxes(vagrant_home) == [("coreos-stable", "1.1.0")]


# -- S3 specifics ------------------------------------------------------------------------------------------
@pytest.mark.s3
def test_s3_objects_carry_content_types_sizes_and_checksums(s3_site: Site, s3: S3Server, store: MirrorStore) -> None:
    big = add_box(store, "big-box", "1.0.0", data=os.urandom(9 * 1024 * 1024))  # above boto3's multipart threshold
    result = s3_site.publish(store)
    client = s3.client()

    def head(path: str) -> dict[str, Any]:
        return client.head_object(Bucket="boxes", Key=f"vagrant/{path}")

    for name in ("coreos-stable", "coreos-stable.json", "flatcar_production_vagrant.json"):
        assert head(name)["ContentType"] == "application/json", name
    assert str(head("index.html")["ContentType"]).startswith("text/html")
    for entry in store.entries():
        box = head(entry.key.relpath)
        assert (box["ContentLength"], box["Metadata"]) == (entry.size, {"sha256": entry.sha256})
    assert str(head(big.key.relpath)["ETag"]).endswith('-2"')  # two parts: a multipart upload
    over_http = requests.get(f"{s3_site.url}/big-box/1.0.0/virtualbox-amd64.box", timeout=60)
    assert len(over_http.content) == big.size
    assert s3_site.publish(store)["written"] == []
    assert len(result["written"]) > 0


@pytest.mark.s3
def test_a_box_that_no_longer_matches_its_sha256_is_not_left_on_s3(
    s3_site: Site, s3: S3Server, store: MirrorStore
) -> None:
    """Damage of the same size (no size check sees it): the hash taken while uploading does."""
    damaged = store.entries("coreos-stable")[-1]
    with store.artifact_path(damaged.key).open("r+b") as box:
        box.seek(damaged.size // 2)
        box.write(b"\xff")
    run = lab(
        "mirror", "publish", s3_site.dest, "--base-url", s3_site.url, "--root", store.root, *s3_site.args,
        env=s3_site.env,
    )  # fmt: skip
    assert run.returncode == 1
    assert f"upload of {damaged.key.relpath}" in run.stderr and "lab mirror verify" in run.stderr
    keys = [o["Key"] for o in s3.client().list_objects_v2(Bucket="boxes").get("Contents", [])]
    assert f"vagrant/{damaged.key.relpath}" not in keys
    assert "vagrant/coreos-stable.json" not in keys and "vagrant/coreos-stable" not in keys


@pytest.mark.s3
def test_s3_without_credentials_is_refused_with_a_hint(s3: S3Server, store: MirrorStore) -> None:
    env = {k: v for k, v in s3.env.items() if not k.startswith("AWS_ACCESS") and not k.startswith("AWS_SECRET")}
    run = lab(
        "mirror", "publish", "s3://boxes/x", "--base-url", "http://127.0.0.1:9", "--root", store.root,
        "--endpoint-url", s3.url, env={**env, "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""},
    )  # fmt: skip
    assert run.returncode == 1
    assert "Unable to locate credentials" in run.stderr and "AWS_ACCESS_KEY_ID" in run.stderr


@pytest.mark.s3
def test_s3_without_the_bucket_is_refused_naming_it(s3: S3Server, store: MirrorStore) -> None:
    run = lab(
        "mirror", "publish", "s3://missing-bucket/x", "--base-url", "http://127.0.0.1:9", "--root", store.root,
        "--endpoint-url", s3.url, env=s3.env,
    )  # fmt: skip
    assert run.returncode == 2
    assert "bucket 'missing-bucket' does not exist" in run.stderr


# -- an interrupted publish --------------------------------------------------------------------------------
class Reader(threading.Thread):
    """Polls the published metadata as a client would, and checks that every box it names is there, whole."""

    def __init__(self, url: str, names: list[str], sizes: dict[str, int]):
        super().__init__(daemon=True)
        self.url, self.names, self.sizes = url, names, sizes
        self.stop = threading.Event()
        self.seen: set[str] = set()  # box URLs seen in metadata
        self.broken: list[str] = []

    def run(self) -> None:
        with requests.Session() as http:
            while not self.stop.is_set():
                for name in self.names:
                    answer = http.get(f"{self.url}/{name}", timeout=30)
                    if answer.status_code != 200:
                        continue
                    for version in answer.json()["versions"]:
                        for provider in version["providers"]:
                            box = http.head(provider["url"], timeout=30)
                            length = int(box.headers.get("Content-Length", -1))
                            if box.status_code != 200 or length != self.sizes[provider["url"]]:
                                self.broken.append(f"{provider['url']}: {box.status_code}, {length} bytes")
                            self.seen.add(provider["url"])


def test_an_interrupted_publish_never_shows_metadata_naming_a_missing_box(
    site: Site, mirror_root: Path, tmp_path: Path
) -> None:
    store = MirrorStore(mirror_root)
    names = [f"box-{i}" for i in range(4)]
    entries = [add_box(store, name, "1.0.0", data=os.urandom(24 * 1024 * 1024)) for name in names]
    reader = Reader(site.url, names, {e.url(site.url): e.size for e in entries})
    # Into a directory on the mirror's filesystem a box is a hard link, made in one step: copies can be cut short.
    args = [*site.args] if site.dest.startswith("s3://") else [*site.args, "--copy"]
    reader.start()
    try:
        publishing = start_lab(
            "mirror", "publish", site.dest, "--base-url", site.url, "--root", store.root, *args, env=site.env
        )
        try:
            record = f"{site.url}/.coreos-lab-publish.json"
            wait_until(
                lambda: entries[0].key.relpath in requests.get(record, timeout=30).text, "the first box published"
            )
        finally:
            processes.kill(publishing)
        last_box = f"{site.url}/{entries[-1].key.relpath}"
        assert requests.head(last_box, timeout=30).status_code != 200  # killed mid-way
        rerun = lab(
            "mirror", "publish", site.dest, "--base-url", site.url, "--root", store.root, "--json", *args,
            env=site.env,
        )  # fmt: skip
        assert rerun.returncode == 0, rerun.stderr
        assert entries[0].key.relpath not in rerun.json()["written"]  # whole before the kill: not sent again
        wait_until(lambda: len(reader.seen) == len(entries), "the reader seeing every box in the metadata")
    finally:
        reader.stop.set()
        reader.join(timeout=60)
    assert reader.broken == []
    assert json.loads(requests.get(f"{site.url}/box-3", timeout=30).text)["name"] == "box-3"
