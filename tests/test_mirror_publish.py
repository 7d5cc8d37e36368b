"""`lab mirror publish DEST` to a directory, run as the CLI: what is written, what is not written again, what is
removed, and what is refused. (Served by real nginx and read by real Vagrant: test_mirror_publish_vagrant.py.)"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest
from harness import processes
from harness.boxes import add_box
from harness.cli import lab, start_lab
from harness.waiting import wait_until

from coreos_lab.mirror.layout import Metadata, MirrorLayout
from coreos_lab.mirror.publish import DirectoryDestination, PublishedFile
from coreos_lab.mirror.store import BoxKey, MirrorStore
from coreos_lab.progress import SilentReporter

BASE = "http://boxes.example.test/vagrant"


@pytest.fixture
def store(mirror_root: Path) -> MirrorStore:
    store = MirrorStore(mirror_root)
    add_box(store, "coreos-stable", "1.0.0")
    add_box(store, "coreos-stable", "1.1.0")
    add_box(store, "flatcar-stable", "3815.2.0")
    add_box(store, "flatcar-stable", "3815.2.0", provider="libvirt")
    return store


def publish(store: MirrorStore, dest: Path, *args: str) -> dict[str, Any]:
    run = lab("mirror", "publish", dest, "--base-url", BASE, "--root", store.root, "--json", *args)
    assert run.returncode == 0, run.stderr
    return run.json()


def test_publish_writes_the_metadata_serve_answers_the_boxes_and_an_index(store: MirrorStore, tmp_path: Path) -> None:
    dest = tmp_path / "site"
    result = publish(store, dest)
    assert result["names"] == ["coreos-stable", "flatcar-stable"]
    layout = MirrorLayout(store)
    for name in ("coreos-stable", "flatcar-stable"):
        served = layout.resolve(f"/{name}", BASE)
        assert isinstance(served, Metadata)
        assert json.loads((dest / f"{name}.json").read_text()) == served.document
        assert not (dest / name).is_file()  # a directory holds `<name>/`; the web server maps /<name> to <name>.json
    for entry in store.entries():
        assert (dest / entry.key.relpath).read_bytes() == store.artifact_path(entry.key).read_bytes()
    seed = json.loads((dest / "stable/amd64-usr/current/flatcar_production_vagrant.json").read_text())
    urls = {provider["url"] for provider in seed["versions"][0]["providers"]}
    assert f"{BASE}/flatcar-stable/3815.2.0/virtualbox-amd64.box" in urls
    assert (dest / "flatcar/stable/amd64-usr/current/version.txt").read_text().startswith("FLATCAR_VERSION=3815.2.0")
    assert not (dest / "flatcar/stable/amd64-usr/current/flatcar_production_vagrant.box").exists()  # not copied twice
    index = (dest / "index.html").read_text()
    assert f"vagrant box add {BASE}/coreos-stable" in index
    # No temporary file left: only the record and the lock publishes take turns by.
    assert sorted(p.name for p in dest.rglob(".*")) == [".coreos-lab-publish.json", ".coreos-lab-publish.lock"]


def test_a_republish_without_change_writes_nothing(store: MirrorStore, tmp_path: Path) -> None:
    dest = tmp_path / "site"
    first = publish(store, dest)
    box = dest / "coreos-stable/1.0.0/virtualbox-amd64.box"
    before = box.stat()
    again = publish(store, dest)
    assert again["written"] == []
    assert again["unchanged"] == len(first["written"])
    assert (box.stat().st_ino, box.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def box_paths(store: MirrorStore) -> list[str]:
    return sorted(e.key.relpath for e in store.entries())


def test_on_the_mirrors_filesystem_boxes_are_hard_links_to_its_files(store: MirrorStore, tmp_path: Path) -> None:
    dest = tmp_path / "site"
    result = publish(store, dest)
    assert sorted(result["linked"]) == box_paths(store)
    for entry in store.entries():
        published, stored = (dest / entry.key.relpath).stat(), store.artifact_path(entry.key).stat()
        assert (published.st_ino, published.st_dev) == (stored.st_ino, stored.st_dev)
    documents = [p for p in result["written"] if p not in result["linked"]]
    assert result["bytes_written"] == sum((dest / p).stat().st_size for p in documents)  # the boxes: no bytes
    human = lab("mirror", "publish", tmp_path / "site-2", "--base-url", BASE, "--root", store.root)
    assert human.returncode == 0, human.stderr
    assert f"{len(box_paths(store))} of them linked to the mirror's files" in human.stderr


def test_copy_writes_copies(store: MirrorStore, tmp_path: Path) -> None:
    dest = tmp_path / "site"
    result = publish(store, dest, "--copy")
    assert result["linked"] == []
    for entry in store.entries():
        published, stored = dest / entry.key.relpath, store.artifact_path(entry.key)
        assert published.stat().st_ino != stored.stat().st_ino
        assert published.read_bytes() == stored.read_bytes()
        assert published.stat().st_mode & 0o777 == 0o644
    assert result["bytes_written"] >= sum(e.size for e in store.entries())


def test_a_mirror_file_a_web_server_could_not_read_is_copied(store: MirrorStore, tmp_path: Path) -> None:
    """A link shares the file's mode: a private mirror's file (0600) is copied, readable (0644), and stays 0600."""
    key = BoxKey("coreos-stable", "1.1.0", "virtualbox")
    store.artifact_path(key).chmod(0o600)
    dest = tmp_path / "site"
    result = publish(store, dest)
    assert sorted(result["linked"]) == [p for p in box_paths(store) if p != key.relpath]
    published = (dest / key.relpath).stat()
    assert published.st_ino != store.artifact_path(key).stat().st_ino
    assert published.st_mode & 0o777 == 0o644
    assert store.artifact_path(key).stat().st_mode & 0o777 == 0o600


def test_on_another_filesystem_boxes_are_copied(store: MirrorStore, tmp_path: Path) -> None:
    """/dev/shm is a tmpfs of its own on Linux: a link across filesystems fails (EXDEV), and the box is copied."""
    other = Path(tempfile.mkdtemp(dir="/dev/shm"))
    try:
        assert other.stat().st_dev != store.root.stat().st_dev, "this test needs /dev/shm on another filesystem"
        result = publish(store, other / "site")
        assert result["linked"] == []
        for entry in store.entries():
            assert (other / "site" / entry.key.relpath).read_bytes() == store.artifact_path(entry.key).read_bytes()
    finally:
        shutil.rmtree(other)


def test_a_box_replaced_in_the_mirror_leaves_the_published_one_whole_until_republished(
    store: MirrorStore, tmp_path: Path
) -> None:
    """The store never writes a file in place: a box replaced under the same name is a new file, so the box
    published as a link to the old one still has the old bytes; the next publish links the new one."""
    dest = tmp_path / "site"
    publish(store, dest)
    key = BoxKey("coreos-stable", "1.1.0", "virtualbox")
    old = (dest / key.relpath).read_bytes()
    add_box(store, "coreos-stable", "1.1.0", data=b"another box")
    assert (dest / key.relpath).read_bytes() == old
    assert key.relpath in publish(store, dest)["written"]
    assert (dest / key.relpath).read_bytes() == b"another box"
    assert (dest / key.relpath).stat().st_ino == store.artifact_path(key).stat().st_ino


def test_a_new_version_writes_its_box_and_the_documents_that_name_it(store: MirrorStore, tmp_path: Path) -> None:
    dest = tmp_path / "site"
    publish(store, dest)
    add_box(store, "coreos-stable", "1.2.0")
    written = publish(store, dest)["written"]
    assert "coreos-stable/1.2.0/virtualbox-amd64.box" in written
    assert "coreos-stable.json" in written
    assert not [p for p in written if p.endswith(".box") and "1.2.0" not in p]
    assert written[-1] == "index.html"
    versions = [v["version"] for v in json.loads((dest / "coreos-stable.json").read_text())["versions"]]
    assert versions == ["1.0.0", "1.1.0", "1.2.0"]


def test_a_new_base_url_rewrites_the_documents_only(store: MirrorStore, tmp_path: Path) -> None:
    dest = tmp_path / "site"
    publish(store, dest)
    run = lab("mirror", "publish", dest, "--base-url", "https://elsewhere.test", "--root", store.root, "--json")
    assert run.returncode == 0, run.stderr
    assert not [p for p in run.json()["written"] if p.endswith(".box")]
    doc = json.loads((dest / "coreos-stable.json").read_text())
    assert doc["versions"][0]["providers"][0]["url"].startswith("https://elsewhere.test/coreos-stable/")


def test_a_box_removed_from_the_destination_is_written_again(store: MirrorStore, tmp_path: Path) -> None:
    dest = tmp_path / "site"
    publish(store, dest)
    (dest / "coreos-stable/1.0.0/virtualbox-amd64.box").unlink()
    assert publish(store, dest)["written"] == ["coreos-stable/1.0.0/virtualbox-amd64.box"]


def test_a_box_gone_from_the_catalog_stays_until_delete(store: MirrorStore, tmp_path: Path) -> None:
    dest = tmp_path / "site"
    publish(store, dest)
    shutil.rmtree(store.version_dir("coreos-stable", "1.0.0"))
    shutil.rmtree(store.root / "flatcar-stable")
    kept = publish(store, dest)
    gone_box = dest / "coreos-stable/1.0.0/virtualbox-amd64.box"
    assert gone_box.is_file()
    assert "coreos-stable/1.0.0/virtualbox-amd64.box" in kept["kept"]
    versions = [v["version"] for v in json.loads((dest / "coreos-stable.json").read_text())["versions"]]
    assert versions == ["1.1.0"]
    assert (dest / "flatcar-stable.json").is_file()  # still names its boxes, which are still there

    removed = publish(store, dest, "--delete")["removed"]
    assert "coreos-stable/1.0.0/virtualbox-amd64.box" in removed
    # Metadata before the boxes it named:
    assert removed.index("flatcar-stable.json") < removed.index("flatcar-stable/3815.2.0/libvirt-amd64.box")
    assert not gone_box.exists() and not gone_box.parent.exists()
    assert not (dest / "flatcar-stable").exists() and not (dest / "flatcar-stable.json").exists()
    assert (dest / "coreos-stable/1.1.0/virtualbox-amd64.box").is_file()
    assert publish(store, dest, "--delete")["removed"] == []


def test_files_the_publish_did_not_write_are_never_deleted(store: MirrorStore, tmp_path: Path) -> None:
    dest = tmp_path / "site"
    dest.mkdir()
    (dest / "robots.txt").write_text("User-agent: *\n")
    publish(store, dest)
    publish(store, dest, "--delete")
    assert (dest / "robots.txt").read_text() == "User-agent: *\n"


def test_a_first_publish_never_overwrites_files_it_did_not_write(store: MirrorStore, tmp_path: Path) -> None:
    dest = tmp_path / "site"
    dest.mkdir()
    (dest / "index.html").write_text("<p>our team page</p>\n")
    run = lab("mirror", "publish", dest, "--base-url", BASE, "--root", store.root)
    assert run.returncode == 2
    assert "did not write: index.html" in run.stderr
    assert (dest / "index.html").read_text() == "<p>our team page</p>\n"
    assert sorted(p.name for p in dest.iterdir()) == [".coreos-lab-publish.lock", "index.html"]


def test_a_box_that_no_longer_matches_its_record_size_is_refused(store: MirrorStore, tmp_path: Path) -> None:
    key = BoxKey("coreos-stable", "1.1.0", "virtualbox")
    with store.artifact_path(key).open("ab") as box:
        box.write(b"rot")
    dest = tmp_path / "site"
    run = lab("mirror", "publish", dest, "--base-url", BASE, "--root", store.root)
    assert run.returncode == 1
    assert "coreos-stable/1.1.0/virtualbox-amd64.box" in run.stderr
    assert not (dest / "coreos-stable.json").exists()  # nothing points at what could not be written
    assert not (dest / key.relpath).exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--base-url", "ftp://x"], "invalid --base-url 'ftp://x'"),
        (["--base-url", BASE, "--endpoint-url", "http://127.0.0.1:9"], "--endpoint-url is for an s3:// destination"),
        (["--base-url", BASE, "--endpoint-url", "minio:9000"], "invalid --endpoint-url 'minio:9000'"),
    ],
)
def test_bad_options_are_refused(store: MirrorStore, tmp_path: Path, args: list[str], message: str) -> None:
    run = lab("mirror", "publish", tmp_path / "site", "--root", store.root, *args)
    assert run.returncode == 2
    assert message in run.stderr
    assert not (tmp_path / "site").exists()


def test_bad_destinations_are_refused(store: MirrorStore, tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("mine\n")
    for dest, message in [
        (a_file, "is not a directory"),
        (store.root / "site", "overlaps the mirror root"),
        (store.root, "overlaps the mirror root"),
        ("s3://", "give a directory or s3://bucket[/prefix]"),
    ]:
        run = lab("mirror", "publish", dest, "--base-url", BASE, "--root", store.root)
        assert (run.returncode, message in run.stderr) == (2, True), (dest, run.stderr)
    assert a_file.read_text() == "mine\n"
    assert not (store.root / "site").exists()
    run = lab("mirror", "publish", "s3://boxes", "--copy", "--base-url", BASE, "--root", store.root)
    assert (run.returncode, "--copy is for a directory destination" in run.stderr) == (2, True), run.stderr


def test_an_empty_mirror_is_refused(tmp_path: Path) -> None:
    run = lab("mirror", "publish", tmp_path / "site", "--base-url", BASE, "--root", tmp_path / "none")
    assert run.returncode == 2
    assert "nothing to publish" in run.stderr
    assert not (tmp_path / "site").exists()


def test_two_publishes_to_one_directory_take_turns(store: MirrorStore, tmp_path: Path) -> None:
    """They would share the temporary names; the second waits for the first's lock (held here by the test)."""
    dest = tmp_path / "site"
    dest.mkdir()
    with (dest / ".coreos-lab-publish.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        waiting = start_lab("mirror", "publish", dest, "--base-url", BASE, "--root", store.root)
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(waiting.stderr or []), daemon=True)
        reader.start()
        try:
            wait_until(lambda: any("waiting for another publish" in line for line in lines), "the second one waiting")
            assert not (dest / "coreos-stable").exists()
        except BaseException:
            processes.kill(waiting)
            raise
    assert waiting.wait(timeout=120) == 0, lines
    reader.join(timeout=10)
    assert (dest / "coreos-stable.json").is_file()


def test_a_disk_error_while_a_box_is_flushed_leaves_nothing_under_its_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flush that runs beside the copy (fdatasync on a thread of its own) fails as a broken disk would: the
    error reaches the publish, and neither the box nor its temporary copy is left where a web server serves."""
    source = tmp_path / "flatcar.box"
    source.write_bytes(b"box bytes " * 1000)

    def broken_disk(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", broken_disk)
    site = tmp_path / "site"
    box = PublishedFile("flatcar/1.0.0/virtualbox-amd64.box", 10_000, "0" * 64, "application/octet-stream", source)
    with pytest.raises(OSError, match="Input/output error"):
        DirectoryDestination(site, copy=True).put_file(box, SilentReporter())
    assert [p for p in site.rglob("*") if not p.is_dir()] == []


@pytest.mark.parametrize("args", [[], ["--copy"]], ids=["link", "copy"])
def test_a_box_whose_name_cannot_be_taken_leaves_no_temporary_file(
    store: MirrorStore, tmp_path: Path, args: list[str]
) -> None:
    """A directory sits where a box goes: the publish fails naming the box, and neither the link nor the copy made
    beside it is left in the served directory."""
    key = BoxKey("coreos-stable", "1.1.0", "virtualbox")
    dest = tmp_path / "site"
    (dest / key.relpath).mkdir(parents=True)
    run = lab("mirror", "publish", dest, "--base-url", BASE, "--root", store.root, *args)
    assert run.returncode == 1
    assert f"writing {key.relpath} to {dest}" in run.stderr
    assert [p.name for p in (dest / key.relpath).parent.iterdir()] == ["virtualbox-amd64.box"]
    assert store.artifact_path(key).stat().st_size == store.get(key).size  # the mirror's box untouched
