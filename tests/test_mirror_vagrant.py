"""The real Vagrant CLI (2.3.4) against `lab mirror serve` running as a subprocess, VAGRANT_HOME in tmp.

No VirtualBox is needed: `vagrant box add` only downloads, checks and unpacks the (tiny, valid) boxes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.boxes import add_box
from harness.mirror import MirrorProcess, mirror_server

from coreos_lab.mirror.store import BoxKey, MirrorStore

pytestmark = [pytest.mark.integration, pytest.mark.vagrant]


@pytest.fixture
def vagrant_home(tmp_path: Path) -> Path:
    home = tmp_path / "vagrant-home"
    home.mkdir()
    return home


def vagrant(
    home: Path, *args: str, timeout: float = 180, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ, VAGRANT_HOME=str(home), VAGRANT_CHECKPOINT_DISABLE="1", VAGRANT_NO_COLOR="1")
    full_env.update(env or {})
    return subprocess.run(
        [shutil.which("vagrant") or "vagrant", *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def installed_boxes(home: Path) -> list[tuple[str, str]]:
    """(name, version) of every box under VAGRANT_HOME, read from its on-disk layout."""
    found = []
    for version_dir in sorted((home / "boxes").glob("*/*")):
        if version_dir.is_dir() and version_dir.name != "metadata_url":
            found.append((version_dir.parent.name.replace("-VAGRANTSLASH-", "/"), version_dir.name))
    return found


def temp_file(home: Path, url: str) -> Path:
    """Where Vagrant keeps an unfinished download of `url` (docs/field-notes.md §1)."""
    return home / "tmp" / f"box{hashlib.sha1(url.encode()).hexdigest()}"


@pytest.fixture
def store(mirror_root: Path) -> MirrorStore:
    store = MirrorStore(mirror_root)
    add_box(store, "coreos-stable", "1.0.0")
    add_box(store, "flatcar-stable", "3815.2.0")
    return store


@pytest.fixture
def server(store: MirrorStore) -> Iterator[MirrorProcess]:
    with mirror_server(store.root) as srv:
        yield srv


@pytest.mark.parametrize(("name", "version"), [("coreos-stable", "1.0.0"), ("flatcar-stable", "3815.2.0")])
def test_box_add_from_metadata_url(server: MirrorProcess, vagrant_home: Path, name: str, version: str) -> None:
    run = vagrant(vagrant_home, "box", "add", f"{server.url}/{name}")
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"Successfully added box '{name}' (v{version}) for 'virtualbox'" in run.stdout
    assert installed_boxes(vagrant_home) == [(name, version)]
    assert server.access_lines(f"/{name}")[0].split('"')[1].startswith("HEAD ")


def test_box_add_from_seed_style_url(server: MirrorProcess, vagrant_home: Path) -> None:
    run = vagrant(vagrant_home, "box", "add", f"{server.url}/stable/amd64-usr/current/flatcar_production_vagrant.json")
    assert run.returncode == 0, run.stdout + run.stderr
    assert installed_boxes(vagrant_home) == [("flatcar-stable", "3815.2.0")]


def test_box_version_picks_among_stored_versions(store: MirrorStore, vagrant_home: Path) -> None:
    for version in ("1.1.0", "2.0.0"):
        add_box(store, "coreos-stable", version)
    with mirror_server(store.root) as srv:
        run = vagrant(vagrant_home, "box", "add", "--box-version", "1.1.0", f"{srv.url}/coreos-stable")
        assert run.returncode == 0, run.stdout + run.stderr
        assert "(v1.1.0)" in run.stdout
        assert srv.access_lines("/coreos-stable/1.1.0/virtualbox-amd64.box")
        assert not srv.access_lines("/coreos-stable/2.0.0/virtualbox-amd64.box")
    assert installed_boxes(vagrant_home) == [("coreos-stable", "1.1.0")]


def test_box_outdated_global_sees_a_newer_stored_version(
    server: MirrorProcess, store: MirrorStore, vagrant_home: Path
) -> None:
    run = vagrant(vagrant_home, "box", "add", f"{server.url}/coreos-stable")
    assert run.returncode == 0, run.stdout + run.stderr
    run = vagrant(vagrant_home, "box", "outdated", "--global")
    assert "is up to date" in run.stdout, run.stdout + run.stderr
    add_box(store, "coreos-stable", "1.1.0")
    run = vagrant(vagrant_home, "box", "outdated", "--global")
    assert "outdated! Current: 1.0.0. Latest: 1.1.0" in run.stdout, run.stdout + run.stderr


def test_wrong_checksum_in_metadata_makes_vagrant_fail(
    server: MirrorProcess, store: MirrorStore, vagrant_home: Path
) -> None:
    """A box damaged after it was verified: the record (and so the metadata) no longer matches the bytes."""
    record = store.record_path(BoxKey("coreos-stable", "1.0.0", "virtualbox"))
    doc = json.loads(record.read_text())
    doc["sha256"] = "0" * 64
    record.write_text(json.dumps(doc))
    run = vagrant(vagrant_home, "box", "add", f"{server.url}/coreos-stable")
    assert run.returncode != 0
    assert "checksum" in (run.stdout + run.stderr).lower()
    assert installed_boxes(vagrant_home) == []


def test_partial_temp_file_is_resumed_with_a_206(server: MirrorProcess, store: MirrorStore, vagrant_home: Path) -> None:
    box_url = f"{server.url}/coreos-stable/1.0.0/virtualbox-amd64.box"
    data = store.artifact_path(BoxKey("coreos-stable", "1.0.0", "virtualbox")).read_bytes()
    partial = temp_file(vagrant_home, box_url)
    partial.parent.mkdir(parents=True)
    partial.write_bytes(data[:200])
    run = vagrant(vagrant_home, "box", "add", f"{server.url}/coreos-stable")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "resuming" in run.stdout
    lines = server.access_lines("/coreos-stable/1.0.0/virtualbox-amd64.box")
    assert [line.split('" ')[1].split()[:2] for line in lines] == [["206", str(len(data) - 200)]]
    assert installed_boxes(vagrant_home) == [("coreos-stable", "1.0.0")]


@pytest.mark.parametrize("extra", [0, 37], ids=["complete", "longer"])
def test_leftover_complete_or_longer_temp_file_does_not_wedge_box_add(
    server: MirrorProcess, store: MirrorStore, vagrant_home: Path, extra: int
) -> None:
    """A 416 here makes curl exit 22 and Vagrant 2.3.4 fail on every retry until `--clean`; our 200 lets
    curl finish ("already downloaded", then Vagrant checks the checksum) or start over."""
    box_url = f"{server.url}/coreos-stable/1.0.0/virtualbox-amd64.box"
    data = store.artifact_path(BoxKey("coreos-stable", "1.0.0", "virtualbox")).read_bytes()
    leftover = temp_file(vagrant_home, box_url)
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(data + b"x" * extra)
    run = vagrant(vagrant_home, "box", "add", f"{server.url}/coreos-stable")
    assert run.returncode == 0, run.stdout + run.stderr
    assert installed_boxes(vagrant_home) == [("coreos-stable", "1.0.0")]
    statuses = [
        line.split('" ')[1].split()[0] for line in server.access_lines("/coreos-stable/1.0.0/virtualbox-amd64.box")
    ]
    assert statuses and "416" not in statuses
