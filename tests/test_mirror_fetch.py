"""`lab mirror fetch` against a fixture release server and bincache on 127.0.0.1 (real HTTP, real gpg)."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from harness import processes
from harness.cli import lab
from harness.upstream import FixtureServer, ReleaseUpstream, SigningKeys, keys, upstream
from harness.waiting import wait_until

from coreos_lab.errors import ExitCode
from coreos_lab.mirror.store import BoxKey, MirrorStore

__all__ = ["keys", "upstream"]  # the fixtures, imported for this module's tests

pytestmark = pytest.mark.integration


def fetch(root: Path, up: ReleaseUpstream, *args: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return lab("mirror", "fetch", "--root", root, "--upstream", up.url, "--json", *args, env=env)


def files_under(root: Path) -> list[Path]:
    return sorted(root.rglob("*"))


# -- the happy paths ---------------------------------------------------------------------------------------


def test_fetch_flatcar_current_follows_the_box_url_to_the_bincache_host(
    mirror_root: Path, upstream: ReleaseUpstream
) -> None:
    upstream.publish("flatcar", "stable", "3760.2.0", current=False)
    release = upstream.publish("flatcar", "stable", "3815.2.0")
    run = fetch(mirror_root, upstream, "--distro", "flatcar", "--channel", "stable")
    assert run.returncode == 0, run.stderr
    doc = run.json()
    assert doc["action"] == "added"
    assert doc["box"]["version"] == "3815.2.0"  # `current` resolved through version.txt
    assert doc["upstream"]["box_url"] == upstream.bincache.url + release.box_path
    assert upstream.release.seen("/stable/amd64-usr/current/version.txt")
    assert [r.path for r in upstream.bincache.seen(".box")] == [release.box_path]
    # Everything else came from the concrete version's directory, not from current/.
    assert not [r for r in upstream.release.requests if "/current/" in r.path and not r.path.endswith("version.txt")]
    store = MirrorStore(mirror_root)
    (entry,) = store.entries()
    assert entry.key == BoxKey("flatcar-stable", "3815.2.0", "virtualbox", "amd64")
    assert store.artifact_path(entry.key).read_bytes() == release.box
    assert entry.sha256 == release.sha256
    kept = sorted(p.name for p in store.upstream_dir("flatcar-stable", "3815.2.0").iterdir())
    assert kept == [
        "flatcar_production_vagrant.box.DIGESTS",
        "flatcar_production_vagrant.box.DIGESTS.asc",
        "flatcar_production_vagrant.box.sig",
        "flatcar_production_vagrant.json",
    ]
    listed = lab("mirror", "list", "--root", mirror_root, "--json", "--base-url", "http://10.0.2.2:8080").json()
    assert listed["boxes"][0]["box_url"] == "http://10.0.2.2:8080/flatcar-stable/3815.2.0/virtualbox-amd64.box"
    assert listed["boxes"][0]["metadata_url"] == "http://10.0.2.2:8080/flatcar-stable"


def test_fetch_coreos_explicit_version(mirror_root: Path, upstream: ReleaseUpstream) -> None:
    old = upstream.publish("coreos", "beta", "717.3.0", current=False)
    upstream.publish("coreos", "beta", "835.5.0")
    run = fetch(mirror_root, upstream, "--distro", "coreos", "--channel", "beta", "--version", "717.3.0")
    assert run.returncode == 0, run.stderr
    assert run.json()["box"]["name"] == "coreos-beta"
    assert not upstream.release.seen("version.txt")
    (entry,) = MirrorStore(mirror_root).entries()
    assert (entry.version, entry.sha256) == ("717.3.0", old.sha256)
    assert len(upstream.release.seen(".json")) == 1
    # Every request asked for the bytes as stored.
    assert {r.headers.get("Accept-Encoding") for r in upstream.release.requests} == {"identity"}


def test_a_coreos_json_naming_the_original_release_host_is_read_from_the_mirror(
    mirror_root: Path, upstream: ReleaseUpstream
) -> None:
    """Mirrors of the (gone) CoreOS release servers keep JSONs whose box url names the original host."""
    original = "http://stable.release.core-os.net/amd64-usr/1235.9.0/coreos_production_vagrant.box"
    release = upstream.publish("coreos", "stable", "1235.9.0", box_url=original)
    guard = FixtureServer()  # a proxy that answers 502 for every host: nothing may leave this machine
    try:
        env = {"http_proxy": guard.url, "https_proxy": guard.url, "no_proxy": "127.0.0.1", "NO_PROXY": "127.0.0.1"}
        run = fetch(mirror_root, upstream, "--distro", "coreos", "--channel", "stable", env=env)
        assert run.returncode == 0, run.stderr
        assert run.json()["upstream"]["box_url"] == upstream.url + release.box_path
        assert guard.requests == []
    finally:
        guard.close()


def test_fetch_honours_the_proxy_environment(mirror_root: Path, upstream: ReleaseUpstream) -> None:
    release = upstream.publish("flatcar", "beta", "3850.1.0")
    proxy = FixtureServer()
    proxy.proxied = {upstream.release.netloc: upstream.release, upstream.bincache.netloc: upstream.bincache}
    try:
        env = {"http_proxy": proxy.url, "HTTP_PROXY": proxy.url, "no_proxy": "", "NO_PROXY": ""}
        run = fetch(mirror_root, upstream, "--distro", "flatcar", "--channel", "beta", env=env)
        assert run.returncode == 0, run.stderr
        targets = [r.target for r in proxy.requests]
        assert upstream.bincache.url + release.box_path in targets
        assert upstream.url + release.path(".json") in targets
    finally:
        proxy.close()


def test_fetching_the_same_box_again_changes_nothing(mirror_root: Path, upstream: ReleaseUpstream) -> None:
    upstream.publish("flatcar", "stable", "3815.2.0")
    assert fetch(mirror_root, upstream).returncode == 0
    record = MirrorStore(mirror_root).record_path(BoxKey("flatcar-stable", "3815.2.0", "virtualbox"))
    before = record.read_text()
    again = fetch(mirror_root, upstream)
    assert again.returncode == 0, again.stderr
    assert again.json()["action"] == "unchanged"
    assert len(upstream.bincache.seen(".box")) == 1
    assert record.read_text() == before


def test_a_changed_upstream_box_is_refused_unless_forced(mirror_root: Path, upstream: ReleaseUpstream) -> None:
    upstream.publish("flatcar", "stable", "3815.2.0")
    assert fetch(mirror_root, upstream).returncode == 0
    store = MirrorStore(mirror_root)
    (first,) = store.entries()
    rebuilt = upstream.publish("flatcar", "stable", "3815.2.0", box=b"\x1f\x8b" + b"rebuilt" * 40)
    refused = fetch(mirror_root, upstream)
    assert refused.returncode == ExitCode.USAGE
    assert "--force" in refused.stderr and "flatcar-stable 3815.2.0" in refused.stderr
    assert store.entries() == [first]
    forced = fetch(mirror_root, upstream, "--force")
    assert forced.returncode == 0, forced.stderr
    assert forced.json()["action"] == "replaced"
    assert store.entries()[0].sha256 == rebuilt.sha256


# -- interrupted downloads -------------------------------------------------------------------------------


def test_a_cut_download_is_never_listed_and_resumes_with_range(mirror_root: Path, upstream: ReleaseUpstream) -> None:
    release = upstream.publish("flatcar", "stable", "3815.2.0")
    upstream.bincache.cut_after[release.box_path] = 200
    cut = fetch(mirror_root, upstream)
    assert cut.returncode == ExitCode.ERROR
    assert "cut" in cut.stderr and "resume" in cut.stderr
    store = MirrorStore(mirror_root)
    key = BoxKey("flatcar-stable", "3815.2.0", "virtualbox")
    assert store.entries() == []
    assert lab("mirror", "list", "--root", mirror_root, "--json").json()["boxes"] == []
    assert store.part_path(key).read_bytes() == release.box[:200]
    assert not store.artifact_path(key).exists()
    assert not store.upstream_dir(key.name, key.version).exists()

    resumed = fetch(mirror_root, upstream)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.json()["resumed_from"] == 200
    assert "resuming" in resumed.stderr and "━" not in resumed.stderr  # notes, but no bar off a terminal
    first, second = upstream.bincache.seen(".box")
    assert "Range" not in first.headers
    assert second.headers["Range"] == "bytes=200-"
    assert second.headers["Accept-Encoding"] == "identity"
    assert store.artifact_path(key).read_bytes() == release.box
    assert not store.part_path(key).exists()


def test_ctrl_c_leaves_a_resumable_part(mirror_root: Path, upstream: ReleaseUpstream) -> None:
    # Large enough that the bytes before the hold pass any write buffer and show in the .part on disk.
    box = b"\x1f\x8b" + bytes(range(256)) * 1024
    release = upstream.publish("flatcar", "stable", "3815.2.0", box=box)
    upstream.bincache.hold_after[release.box_path] = len(box) // 2
    part = MirrorStore(mirror_root).part_path(BoxKey("flatcar-stable", "3815.2.0", "virtualbox"))
    argv = [
        sys.executable,
        "-m",
        "coreos_lab",
        "mirror",
        "fetch",
        "--root",
        str(mirror_root),
        "--upstream",
        upstream.url,
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: part.exists() and part.stat().st_size > 0, "the first bytes of the box in the .part file")
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        upstream.bincache.release.set()
        processes.kill(proc)
    assert proc.returncode == ExitCode.INTERRUPTED, stderr
    kept = part.read_bytes()
    assert 0 < len(kept) <= len(box) // 2 and box.startswith(kept)
    store = MirrorStore(mirror_root)
    assert store.entries() == []
    resumed = fetch(mirror_root, upstream)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.json()["resumed_from"] == len(kept)
    assert store.artifact_path(store.entries()[0].key).read_bytes() == box


def test_an_upstream_that_ignores_range_gets_a_full_download(mirror_root: Path, upstream: ReleaseUpstream) -> None:
    release = upstream.publish("flatcar", "stable", "3815.2.0")
    upstream.bincache.ignore_range = True
    upstream.bincache.cut_after[release.box_path] = 300
    assert fetch(mirror_root, upstream).returncode == ExitCode.ERROR
    resumed = fetch(mirror_root, upstream)
    assert resumed.returncode == 0, resumed.stderr
    doc = resumed.json()
    assert (doc["range_ignored"], doc["resumed_from"]) == (True, 0)
    assert upstream.bincache.seen(".box")[-1].headers["Range"] == "bytes=300-"
    assert "ignored Range" in resumed.stderr
    (entry,) = MirrorStore(mirror_root).entries()
    assert entry.sha256 == release.sha256


def test_a_complete_part_answered_with_416_is_committed(mirror_root: Path, upstream: ReleaseUpstream) -> None:
    """A crash after the last byte but before the commit: the server answers the Range with 416."""
    release = upstream.publish("flatcar", "stable", "3815.2.0")
    store = MirrorStore(mirror_root)
    part = store.part_path(BoxKey("flatcar-stable", "3815.2.0", "virtualbox"))
    part.parent.mkdir(parents=True)
    part.write_bytes(release.box)
    run = fetch(mirror_root, upstream)
    assert run.returncode == 0, run.stderr
    assert run.json()["resumed_from"] == len(release.box)
    assert upstream.bincache.seen(".box")[0].headers["Range"] == f"bytes={len(release.box)}-"
    assert store.entries()[0].sha256 == release.sha256


def test_a_part_holding_other_bytes_is_discarded_after_the_checksum_fails(
    mirror_root: Path, upstream: ReleaseUpstream
) -> None:
    release = upstream.publish("flatcar", "stable", "3815.2.0")
    store = MirrorStore(mirror_root)
    part = store.part_path(BoxKey("flatcar-stable", "3815.2.0", "virtualbox"))
    part.parent.mkdir(parents=True)
    part.write_bytes(b"not the same bytes" * 5)
    refused = fetch(mirror_root, upstream)
    assert refused.returncode == ExitCode.USAGE
    assert "wrong checksum" in refused.stderr
    assert files_under(mirror_root) == []
    again = fetch(mirror_root, upstream)
    assert again.returncode == 0, again.stderr
    assert store.entries()[0].sha256 == release.sha256


def test_two_fetches_of_the_same_box_take_turns(mirror_root: Path, upstream: ReleaseUpstream, tmp_path: Path) -> None:
    release = upstream.publish("flatcar", "stable", "3815.2.0")
    upstream.bincache.hold_after[release.box_path] = len(release.box) // 2  # the first fetch stays mid-download
    argv = [sys.executable, "-m", "coreos_lab", "mirror", "fetch", "--root", str(mirror_root)]
    argv += ["--upstream", upstream.url, "--json"]
    second_stderr = tmp_path / "second.stderr"
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
    try:
        wait_until(lambda: upstream.bincache.seen(".box"), "the first fetch downloading the box")
        with second_stderr.open("w") as err:
            procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True))
        wait_until(lambda: "waiting for another lab process" in second_stderr.read_text(), "the second fetch waiting")
        upstream.bincache.release.set()
        outputs = [p.communicate(timeout=120) for p in procs]
    finally:
        upstream.bincache.release.set()
        for p in procs:
            processes.kill(p)
    assert [p.returncode for p in procs] == [0, 0], (outputs, second_stderr.read_text())
    assert [json.loads(out)["action"] for out, _ in outputs] == ["added", "unchanged"]
    assert len(upstream.bincache.seen(".box")) == 1
    assert MirrorStore(mirror_root).entries()[0].sha256 == release.sha256


# -- bad upstream data and bad options: a clear error, the store unchanged ---------------------------------


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"json_override": b"<html>not json</html>"}, "box metadata is not JSON"),
        ({"json_override": b"[1, 2]"}, "must be a JSON object"),
        ({"metadata_edit": {"versions": None}}, "field versions must be a non-empty list"),
        ({"metadata_edit": {"name": "flatcar-beta"}}, "field name is 'flatcar-beta', expected 'flatcar-stable'"),
        ({"provider_edit": {"checksum_type": "crc32"}}, "unknown checksum_type 'crc32'"),
        ({"provider_edit": {"checksum": "abc"}}, "checksum 'abc' is not a sha256 hex digest"),
        ({"provider_edit": {"checksum": None}}, "providers[0].checksum is missing"),
        ({"provider_edit": {"checksum": "0" * 64}}, "wrong checksum"),
        ({"provider_edit": {"url": None}}, "has no url"),
    ],
)
def test_bad_upstream_metadata_is_refused(
    mirror_root: Path, upstream: ReleaseUpstream, edit: dict[str, object], message: str
) -> None:
    release = upstream.publish("flatcar", "stable", "3815.2.0", **edit)  # type: ignore[arg-type]
    run = fetch(mirror_root, upstream)
    assert run.returncode == ExitCode.USAGE, run.stderr
    assert message in run.stderr
    assert release.path(".json") in run.stderr or upstream.bincache.url in run.stderr
    assert files_under(mirror_root) == []


def test_a_wrong_sha512_in_digests_is_refused(mirror_root: Path, upstream: ReleaseUpstream) -> None:
    release = upstream.publish("flatcar", "stable", "3815.2.0", signed=False)
    digests = release.path(".box.DIGESTS")
    text = upstream.release.files[digests].decode().splitlines()
    text[-1] = "f" * 128 + "  flatcar_production_vagrant.box"
    upstream.release.files[digests] = "\n".join(text).encode()
    run = fetch(mirror_root, upstream, "--version", "3815.2.0")
    assert run.returncode == ExitCode.USAGE
    assert f"sha512 is {hashlib.sha512(release.box).hexdigest()}" in run.stderr
    assert "DIGESTS says " + "f" * 128 in run.stderr
    assert files_under(mirror_root) == []


def test_digests_without_sha512_are_refused(mirror_root: Path, upstream: ReleaseUpstream) -> None:
    release = upstream.publish("flatcar", "stable", "3815.2.0")
    upstream.release.files[release.path(".box.DIGESTS")] = (
        b"# MD5 HASH\n" + b"0" * 32 + b"  flatcar_production_vagrant.box\n"
    )
    run = fetch(mirror_root, upstream, "--version", "3815.2.0")
    assert run.returncode == ExitCode.USAGE
    assert "SHA512 HASH for flatcar_production_vagrant.box is missing" in run.stderr
    assert files_under(mirror_root) == []


def test_version_txt_without_the_version_is_refused(mirror_root: Path, upstream: ReleaseUpstream) -> None:
    upstream.publish("coreos", "stable", "1235.9.0")
    upstream.release.files["/stable/amd64-usr/current/version.txt"] = b"COREOS_BUILD=1235\n"
    run = fetch(mirror_root, upstream, "--distro", "coreos")
    assert run.returncode == ExitCode.USAGE
    assert "current/version.txt: field COREOS_VERSION is missing" in run.stderr
    assert files_under(mirror_root) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--version", "9999.0.0"], "9999.0.0/flatcar_production_vagrant.json: not found (HTTP 404)"),
        (["--version", "../../etc"], "invalid box --version '../../etc'"),
        (["--channel", "edge"], "unknown --channel 'edge' for flatcar"),
        (["--distro", "ubuntu"], "'ubuntu' is not one of"),
        (["--provider", "parallels"], "no box with version '3815.2.0', provider 'parallels'"),
        (["--upstream", "ftp://mirror.example"], "--upstream 'ftp://mirror.example' is not an http(s) URL"),
        (["--keyring", "/nonexistent/key.asc"], "--keyring /nonexistent/key.asc: no such file"),
    ],
)
def test_bad_options_are_refused(mirror_root: Path, upstream: ReleaseUpstream, args: list[str], message: str) -> None:
    upstream.publish("flatcar", "stable", "3815.2.0")
    run = fetch(mirror_root, upstream, *args)
    assert run.returncode == ExitCode.USAGE, run.stderr
    assert message in run.stderr
    assert files_under(mirror_root) == []


def test_an_unreachable_upstream_is_a_network_error(mirror_root: Path) -> None:
    dead = FixtureServer()
    url = dead.url
    dead.close()  # nothing listens on that port any more
    run = lab("mirror", "fetch", "--root", mirror_root, "--upstream", url)
    assert run.returncode == ExitCode.ERROR
    assert f"cannot download {url}/stable/amd64-usr/current/version.txt" in run.stderr
    assert files_under(mirror_root) == []


# -- signatures --------------------------------------------------------------------------------------------


def test_signatures_are_verified_with_the_keyring(
    mirror_root: Path, upstream: ReleaseUpstream, keys: SigningKeys
) -> None:
    upstream.publish("flatcar", "stable", "3815.2.0")
    run = fetch(mirror_root, upstream, "--keyring", keys.keyring)
    assert run.returncode == 0, run.stderr
    assert run.json()["signatures_verified"] == [
        "flatcar_production_vagrant.box.DIGESTS.asc",
        "flatcar_production_vagrant.box.sig",
    ]


def test_a_detached_armored_digests_signature_and_a_box_signature_alone_are_accepted(
    mirror_root: Path, upstream: ReleaseUpstream, keys: SigningKeys
) -> None:
    flatcar = upstream.publish("flatcar", "stable", "3815.2.0")
    digests = upstream.release.files[flatcar.path(".box.DIGESTS")]
    upstream.release.files[flatcar.path(".box.DIGESTS.asc")] = keys.detach_sign(digests, armor=True)
    run = fetch(mirror_root, upstream, "--keyring", keys.keyring)
    assert run.returncode == 0, run.stderr
    assert run.json()["signatures_verified"][0] == "flatcar_production_vagrant.box.DIGESTS.asc"

    coreos = upstream.publish("coreos", "stable", "1235.9.0")
    del upstream.release.files[coreos.path(".box.DIGESTS.asc")]
    run = fetch(mirror_root, upstream, "--distro", "coreos", "--keyring", keys.keyring)
    assert run.returncode == 0, run.stderr
    assert run.json()["signatures_verified"] == ["coreos_production_vagrant.box.sig"]


def test_digests_signed_by_another_key_are_refused_before_the_box_is_downloaded(
    mirror_root: Path, upstream: ReleaseUpstream, keys: SigningKeys
) -> None:
    release = upstream.publish("flatcar", "stable", "3815.2.0")
    digests = upstream.release.files[release.path(".box.DIGESTS")]
    upstream.release.files[release.path(".box.DIGESTS.asc")] = keys.clearsign(digests, keys.stranger)
    run = fetch(mirror_root, upstream, "--keyring", keys.keyring)
    assert run.returncode == ExitCode.USAGE
    assert "flatcar_production_vagrant.box.DIGESTS.asc does not verify with keyring" in run.stderr
    assert upstream.bincache.seen(".box") == []
    assert files_under(mirror_root) == []


def test_a_box_signature_over_other_bytes_is_refused(
    mirror_root: Path, upstream: ReleaseUpstream, keys: SigningKeys
) -> None:
    release = upstream.publish("coreos", "stable", "1235.9.0")
    upstream.release.files[release.path(".box.sig")] = keys.detach_sign(b"some other box")
    run = fetch(mirror_root, upstream, "--distro", "coreos", "--keyring", keys.keyring)
    assert run.returncode == ExitCode.USAGE
    assert "coreos_production_vagrant.box.sig over" in run.stderr and "BADSIG" in run.stderr
    assert files_under(mirror_root) == []


def test_a_keyring_without_published_signatures_is_refused(
    mirror_root: Path, upstream: ReleaseUpstream, keys: SigningKeys
) -> None:
    upstream.publish("flatcar", "stable", "3815.2.0", signed=False)
    run = fetch(mirror_root, upstream, "--keyring", keys.keyring)
    assert run.returncode == ExitCode.USAGE
    assert "has neither flatcar_production_vagrant.box.DIGESTS.asc nor" in run.stderr
    assert files_under(mirror_root) == []


def test_a_keyring_that_is_no_key_is_refused(mirror_root: Path, upstream: ReleaseUpstream, tmp_path: Path) -> None:
    upstream.publish("flatcar", "stable", "3815.2.0")
    bogus = tmp_path / "keyring.asc"
    bogus.write_text("not a key\n")
    run = fetch(mirror_root, upstream, "--keyring", bogus)
    assert run.returncode == ExitCode.USAGE
    assert f"--keyring {bogus}: not an OpenPGP public key file" in run.stderr
    assert files_under(mirror_root) == []
