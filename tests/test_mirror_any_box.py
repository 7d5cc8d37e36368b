"""`lab mirror fetch --metadata-url` against Debian's nginx serving a bento-style upstream on 127.0.0.1: a Vagrant
Cloud metadata JSON with several versions, providers and architectures, the boxes beside it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness.boxes import make_box
from harness.cli import LabRun, lab
from harness.nginx import Nginx, nginx_serving

from coreos_lab.mirror.layout import Metadata, MirrorLayout, StoredFile
from coreos_lab.mirror.store import BoxKey, MirrorStore

pytestmark = pytest.mark.integration

NAME = "bento/debian-12"
VERSIONS = ("202510.26.0", "202511.01.0")
# (provider, architecture, default_architecture) as bento lists them: arm64 first, amd64 the default.
PROVIDERS = (("virtualbox", "arm64", False), ("virtualbox", "amd64", True), ("libvirt", "amd64", True))


@dataclass
class Upstream:
    nginx: Nginx
    root: Path
    boxes: dict[tuple[str, str, str], bytes]  # (version, provider, architecture) → bytes

    def url(self, path: str) -> str:
        return f"{self.nginx.url}/{path}"

    def downloaded(self) -> list[str]:
        return [line.split('"')[1].split()[1] for line in self.nginx.access_log().splitlines() if ".box " in line]

    def write_metadata(self, path: str, doc: dict[str, object]) -> str:
        (self.root / path).parent.mkdir(parents=True, exist_ok=True)
        (self.root / path).write_text(json.dumps(doc))
        return self.url(path)


def box_file(version: str, provider: str, arch: str) -> str:
    return f"boxes/debian-12/{version}/{provider}-{arch}.box"


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[Upstream]:
    root = tmp_path / "upstream"
    boxes = {}
    versions = []
    for version in VERSIONS:
        providers = []
        for i, (provider, arch, default) in enumerate(PROVIDERS):
            data = make_box("debian-12", version, provider, padding=i)  # each box's bytes its own
            boxes[(version, provider, arch)] = data
            (root / box_file(version, provider, arch)).parent.mkdir(parents=True, exist_ok=True)
            (root / box_file(version, provider, arch)).write_bytes(data)
            providers.append(
                {
                    "name": provider,
                    "url": "/" + box_file(version, provider, arch),  # relative: taken against the metadata URL
                    "checksum_type": "sha256",
                    "checksum": hashlib.sha256(data).hexdigest(),
                    "architecture": arch,
                    "default_architecture": default,
                }
            )
        versions.append({"version": version, "status": "active", "providers": providers})
    root.mkdir(exist_ok=True)
    (root / "bento").mkdir()
    (root / "bento" / "debian-12.json").write_text(json.dumps({"name": NAME, "versions": versions}))
    with nginx_serving(root, tmp_path / "nginx") as nginx:
        yield Upstream(nginx, root, boxes)


def fetch(root: Path, *args: str) -> LabRun:
    return lab("mirror", "fetch", "--root", root, "--json", *args)


def stored(root: Path) -> list[tuple[str, str, str, str]]:
    return [(e.name, e.version, e.key.provider, e.key.architecture) for e in MirrorStore(root).entries()]


def files_under(root: Path) -> list[Path]:
    return sorted(root.rglob("*")) if root.exists() else []


# -- choosing ----------------------------------------------------------------------------------------------


def test_a_plain_name_box_with_one_version_and_provider(mirror_root: Path, upstream: Upstream) -> None:
    data = make_box("tinybox", "1.0.0", "libvirt")
    (upstream.root / "tinybox.box").write_bytes(data)
    url = upstream.write_metadata(
        "tinybox.json",
        {
            "name": "tinybox",
            "versions": [
                {
                    "version": "1.0.0",
                    "providers": [
                        {
                            "name": "libvirt",
                            "url": upstream.url("tinybox.box"),
                            "checksum_type": "sha512",
                            "checksum": hashlib.sha512(data).hexdigest(),
                        }
                    ],
                }
            ],
        },
    )
    run = fetch(mirror_root, "--metadata-url", url)
    assert run.returncode == 0, run.stderr
    (result,) = run.json()["boxes"]
    assert result["action"] == "added"
    assert result["upstream"]["box_url"] == upstream.url("tinybox.box")
    store = MirrorStore(mirror_root)
    assert store.artifact_path(BoxKey("tinybox", "1.0.0", "libvirt")).read_bytes() == data
    again = fetch(mirror_root, "--metadata-url", url)
    assert again.returncode == 0, again.stderr
    assert again.json()["boxes"][0]["action"] == "unchanged"
    assert upstream.downloaded() == ["/tinybox.box"]


def test_an_org_box_of_the_asked_provider_and_architecture(mirror_root: Path, upstream: Upstream) -> None:
    url = upstream.url("bento/debian-12.json")
    run = fetch(mirror_root, "--metadata-url", url, "--provider", "virtualbox", "--architecture", "arm64")
    assert run.returncode == 0, run.stderr
    newest = VERSIONS[-1]
    assert stored(mirror_root) == [(NAME, newest, "virtualbox", "arm64")]
    assert upstream.downloaded() == [f"/{box_file(newest, 'virtualbox', 'arm64')}"]
    box = MirrorStore(mirror_root).artifact_path(BoxKey(NAME, newest, "virtualbox", "arm64"))
    assert box == mirror_root / "bento" / "debian-12" / newest / "virtualbox-arm64.box"
    assert box.read_bytes() == upstream.boxes[(newest, "virtualbox", "arm64")]
    listed = lab("mirror", "list", "--root", mirror_root, "--json", "--base-url", "http://mirror.test")
    assert listed.returncode == 0, listed.stderr
    (row,) = listed.json()["boxes"]
    assert row["metadata_url"] == "http://mirror.test/bento/debian-12"
    assert row["box_url"] == f"http://mirror.test/bento/debian-12/{newest}/virtualbox-arm64.box"


def test_without_architecture_the_default_architecture_is_fetched(mirror_root: Path, upstream: Upstream) -> None:
    run = fetch(mirror_root, "--metadata-url", upstream.url("bento/debian-12"), "--provider", "virtualbox")
    assert run.returncode == 0, run.stderr
    assert stored(mirror_root) == [(NAME, VERSIONS[-1], "virtualbox", "amd64")]


def test_all_versions_of_one_provider(mirror_root: Path, upstream: Upstream) -> None:
    url = upstream.url("bento/debian-12.json")
    run = fetch(mirror_root, "--metadata-url", url, "--provider", "libvirt", "--all-versions")
    assert run.returncode == 0, run.stderr
    assert stored(mirror_root) == [(NAME, v, "libvirt", "amd64") for v in VERSIONS]
    assert sorted(upstream.downloaded()) == sorted(f"/{box_file(v, 'libvirt', 'amd64')}" for v in VERSIONS)


def test_one_version(mirror_root: Path, upstream: Upstream) -> None:
    url = upstream.url("bento/debian-12.json")
    run = fetch(mirror_root, "--metadata-url", url, "--provider", "libvirt", "--version", VERSIONS[0])
    assert run.returncode == 0, run.stderr
    assert stored(mirror_root) == [(NAME, VERSIONS[0], "libvirt", "amd64")]


def test_an_interrupted_download_is_resumed(mirror_root: Path, upstream: Upstream) -> None:
    """A `.part` left by an interrupted fetch: the next one asks nginx for the rest only."""
    newest = VERSIONS[-1]
    data = upstream.boxes[(newest, "libvirt", "amd64")]
    part = MirrorStore(mirror_root).part_path(BoxKey(NAME, newest, "libvirt"))
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:100])
    run = fetch(mirror_root, "--metadata-url", upstream.url("bento/debian-12.json"), "--provider", "libvirt")
    assert run.returncode == 0, run.stderr
    assert run.json()["boxes"][0]["resumed_from"] == 100
    assert MirrorStore(mirror_root).artifact_path(BoxKey(NAME, newest, "libvirt")).read_bytes() == data
    assert not part.exists()
    statuses = [line.split('" ')[1].split()[0] for line in upstream.nginx.access_log().splitlines() if ".box " in line]
    assert statuses == ["206"]


# -- refusals: exit 2, the store as it was --------------------------------------------------------------------


def test_a_name_with_two_slashes_is_refused(mirror_root: Path, upstream: Upstream) -> None:
    data = make_box("x", "1.0.0")
    (upstream.root / "x.box").write_bytes(data)
    doc = {
        "name": "a/b/c",
        "versions": [
            {
                "version": "1.0.0",
                "providers": [{"name": "virtualbox", "url": "x.box", "checksum_type": "sha256", "checksum": "0" * 64}],
            }
        ],
    }
    run = fetch(mirror_root, "--metadata-url", upstream.write_metadata("abc.json", doc))
    assert run.returncode == 2
    assert "invalid box name 'a/b/c'" in run.stderr and "abc.json" in run.stderr
    assert files_under(mirror_root) == []
    assert upstream.downloaded() == []


def test_a_checksum_mismatch_is_refused_and_nothing_is_kept(mirror_root: Path, upstream: Upstream) -> None:
    doc = json.loads((upstream.root / "bento" / "debian-12.json").read_text())
    for version in doc["versions"]:
        for provider in version["providers"]:
            provider["checksum"] = "0" * 64
    url = upstream.write_metadata("bento/debian-12-wrong.json", doc)
    run = fetch(mirror_root, "--metadata-url", url, "--provider", "libvirt")
    assert run.returncode == 2
    assert "wrong checksum" in run.stderr and "sha256" in run.stderr
    assert stored(mirror_root) == []
    assert [p for p in files_under(mirror_root) if p.is_file()] == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--provider", "hyperv"], "no box with provider 'hyperv'"),
        (["--provider", "libvirt", "--architecture", "arm64"], "no box with provider 'libvirt', architecture 'arm64'"),
        (["--version", "1.0.0"], "no box with version '1.0.0'"),
    ],
)
def test_a_metadata_without_the_asked_box_is_refused(
    mirror_root: Path, upstream: Upstream, args: list[str], message: str
) -> None:
    run = fetch(mirror_root, "--metadata-url", upstream.url("bento/debian-12.json"), *args)
    assert run.returncode == 2
    assert message in run.stderr and "the document has:" in run.stderr
    assert files_under(mirror_root) == []
    assert upstream.downloaded() == []


def test_several_boxes_matching_is_refused(mirror_root: Path, upstream: Upstream) -> None:
    run = fetch(mirror_root, "--metadata-url", upstream.url("bento/debian-12.json"))
    assert run.returncode == 2
    assert "boxes match" in run.stderr and "--provider" in run.stderr
    assert files_under(mirror_root) == []


def test_a_box_url_that_is_not_http_is_refused(mirror_root: Path, upstream: Upstream) -> None:
    doc = {
        "name": "local",
        "versions": [
            {
                "version": "1.0.0",
                "providers": [
                    {"name": "virtualbox", "url": "file:///etc/passwd", "checksum_type": "sha256", "checksum": "0" * 64}
                ],
            }
        ],
    }
    run = fetch(mirror_root, "--metadata-url", upstream.write_metadata("local.json", doc))
    assert run.returncode == 2
    assert "not an http(s) URL: 'file:///etc/passwd'" in run.stderr
    assert files_under(mirror_root) == []


def test_options_of_the_release_fetch_are_refused_with_a_metadata_url(mirror_root: Path) -> None:
    run = fetch(mirror_root, "--metadata-url", "http://127.0.0.1:9/x.json", "--keyring", str(mirror_root / "k"))
    assert run.returncode == 2
    assert "--keyring" in run.stderr
    run = fetch(mirror_root, "--metadata-url", "ftp://example.test/x.json")
    assert run.returncode == 2
    assert "not an http(s) URL" in run.stderr


# -- what the mirror serves ---------------------------------------------------------------------------------


def test_an_org_box_is_served_at_org_slash_name(mirror_root: Path, upstream: Upstream) -> None:
    url = upstream.url("bento/debian-12.json")
    for arch in ("arm64", "amd64"):
        run = fetch(mirror_root, "--metadata-url", url, "--provider", "virtualbox", "--architecture", arch)
        assert run.returncode == 0, run.stderr
    layout = MirrorLayout(MirrorStore(mirror_root))
    base = "http://mirror.test"
    for path in ("/bento/debian-12", "/bento/debian-12.json"):
        answer = layout.resolve(path, base)
        assert isinstance(answer, Metadata)
        assert answer.document["name"] == NAME
    (version,) = answer.document["versions"]
    # One default per provider, and it comes last: Vagrant 2.3 keeps the last entry of a provider name.
    assert [(p["architecture"], p["default_architecture"]) for p in version["providers"]] == [
        ("arm64", False),
        ("amd64", True),
    ]
    box = layout.resolve(f"/bento/debian-12/{VERSIONS[-1]}/virtualbox-arm64.box", base)
    assert isinstance(box, StoredFile)
    assert box.path.read_bytes() == upstream.boxes[(VERSIONS[-1], "virtualbox", "arm64")]
    assert {
        "/bento/debian-12",
        "/bento/debian-12.json",
        f"/bento/debian-12/{VERSIONS[-1]}/virtualbox-amd64.box",
    } <= set(layout.paths())
    verified = lab("mirror", "verify", "--root", mirror_root, "--json")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.json()["checked"] == 2
    site = mirror_root.parent / "site"
    published = lab("mirror", "publish", site, "--base-url", base, "--root", mirror_root)
    assert published.returncode == 0, published.stderr
    assert json.loads((site / "bento" / "debian-12.json").read_text())["name"] == NAME
    assert (site / "bento" / "debian-12" / VERSIONS[-1] / "virtualbox-arm64.box").read_bytes() == upstream.boxes[
        (VERSIONS[-1], "virtualbox", "arm64")
    ]
