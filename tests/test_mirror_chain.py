"""One mirror fetching from another: `lab mirror fetch --upstream <served mirror>/<distro>` against a real
`lab mirror serve`, which answers the release servers' layout with the upstream DIGESTS and signatures it kept."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness.boxes import add_box
from harness.cli import lab
from harness.mirror import mirror_server
from harness.upstream import ReleaseUpstream, SigningKeys, keys, upstream

from coreos_lab.mirror.store import MirrorStore

__all__ = ["keys", "upstream"]  # the fixtures, imported for this module's tests

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(("distro", "version_args"), [("flatcar", []), ("coreos", ["--version", "1235.9.0"])])
def test_a_mirror_fetches_from_a_served_mirror_with_signatures(
    tmp_path: Path, upstream: ReleaseUpstream, keys: SigningKeys, distro: str, version_args: list[str]
) -> None:
    (tmp_path / "team").mkdir()
    team, laptop = tmp_path / "team", tmp_path / "laptop"
    release = upstream.publish(distro, "stable", "1235.9.0")
    first = lab(
        "mirror", "fetch", "--root", team, "--upstream", upstream.url, "--distro", distro, "--keyring", keys.keyring
    )
    assert first.returncode == 0, first.stderr
    with mirror_server(team) as srv:
        run = lab(
            "mirror", "fetch", "--root", laptop, "--upstream", f"{srv.url}/{distro}", "--distro", distro,
            "--keyring", keys.keyring, "--json", *version_args,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        release_dir = f"/{distro}/stable/amd64-usr/1235.9.0/{distro}_production_vagrant"
        assert srv.access_lines(f"{release_dir}.box.DIGESTS") and srv.access_lines(f"{release_dir}.box.sig")
        assert srv.access_lines(f"/{distro}-stable/1235.9.0/virtualbox-amd64.box")  # the JSON's box URL
    doc = run.json()
    assert doc["upstream"]["box_url"] == f"{srv.url}/{distro}-stable/1235.9.0/virtualbox-amd64.box"
    (entry,) = MirrorStore(laptop).entries()
    assert MirrorStore(laptop).artifact_path(entry.key).read_bytes() == release.box
    kept = sorted(p.name for p in MirrorStore(laptop).upstream_dir(entry.name, entry.version).iterdir())
    assert f"{distro}_production_vagrant.box.sig" in kept


def test_release_layout_answers(mirror_root: Path) -> None:
    """version.txt and the JSON for `current`; an imported box has no DIGESTS to pass on (404 says why)."""
    import json
    import urllib.error
    import urllib.request

    store = MirrorStore(mirror_root)
    add_box(store, "coreos-beta", "1.0.0")
    add_box(store, "coreos-beta", "1.2.0")
    with mirror_server(mirror_root) as srv:
        base = f"{srv.url}/coreos/beta/amd64-usr"
        with urllib.request.urlopen(f"{base}/current/version.txt") as resp:
            assert resp.read().decode().splitlines()[0] == "COREOS_VERSION=1.2.0"
        with urllib.request.urlopen(f"{base}/1.0.0/coreos_production_vagrant.json") as resp:
            assert [v["version"] for v in json.load(resp)["versions"]] == ["1.0.0"]
        with urllib.request.urlopen(f"{base}/current/coreos_production_vagrant.box") as resp:
            assert resp.read() == store.artifact_path(store.entries()[-1].key).read_bytes()
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"{base}/current/coreos_production_vagrant.box.DIGESTS")
        assert missing.value.code == 404 and b"not fetched from a release server" in missing.value.read()
        with pytest.raises(urllib.error.HTTPError) as unknown:
            urllib.request.urlopen(f"{base}/current/../../../../etc/passwd")
        assert unknown.value.code == 404
