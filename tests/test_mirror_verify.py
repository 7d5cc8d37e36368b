"""`lab mirror verify`: re-hash every box, report damage, exit 1 on any. And `lab mirror list`, its reading twin."""

from __future__ import annotations

import threading
from pathlib import Path

from harness.boxes import add_box, sha256
from harness.cli import lab

from coreos_lab.errors import ExitCode
from coreos_lab.mirror.store import BoxKey, MirrorStore


def verify(root: Path):  # type: ignore[no-untyped-def]
    return lab("mirror", "verify", "--root", root, "--json")


def test_a_healthy_mirror_verifies(mirror_root: Path) -> None:
    store = MirrorStore(mirror_root)
    add_box(store, "flatcar-stable", "3815.2.0")
    add_box(store, "coreos-stable", "1235.9.0")
    run = verify(mirror_root)
    assert run.returncode == 0, run.stderr
    doc = run.json()
    assert (doc["ok"], doc["checked"], doc["failed"]) == (True, 2, 0)
    assert {f["status"] for f in doc["findings"]} == {"ok"}


def test_a_changed_box_fails(mirror_root: Path) -> None:
    store = MirrorStore(mirror_root)
    entry = add_box(store, "flatcar-stable", "3815.2.0")
    add_box(store, "flatcar-stable", "3760.2.0")
    path = store.artifact_path(entry.key)
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    run = verify(mirror_root)
    assert run.returncode == ExitCode.ERROR
    bad = [f for f in run.json()["findings"] if f["status"] != "ok"]
    assert len(bad) == 1
    assert bad[0]["status"] == "sha256 mismatch" and bad[0]["path"] == str(path)
    assert f"expected {entry.sha256}" in bad[0]["detail"]
    human = lab("mirror", "verify", "--root", mirror_root)
    assert human.returncode == ExitCode.ERROR
    assert "sha256 mismatch" in human.stderr and "1 failed" in human.stderr


def test_damaged_records_and_missing_boxes_fail(mirror_root: Path) -> None:
    store = MirrorStore(mirror_root)
    damaged = add_box(store, "flatcar-stable", "3815.2.0")
    missing = add_box(store, "flatcar-beta", "3850.1.0")
    store.record_path(damaged.key).write_text("{ half a record")
    store.artifact_path(missing.key).unlink()
    run = verify(mirror_root)
    assert run.returncode == ExitCode.ERROR
    statuses = {f["status"]: f for f in run.json()["findings"]}
    assert set(statuses) == {"damaged record", "box missing"}
    assert str(store.record_path(damaged.key)) in statuses["damaged record"]["detail"]
    # The box whose record is damaged is not in the catalog: never listed, never served.
    assert [e.key for e in store.entries()] == []


def test_a_record_missing_a_field_is_reported_by_name(mirror_root: Path) -> None:
    store = MirrorStore(mirror_root)
    entry = add_box(store, "flatcar-stable", "3815.2.0")
    record = store.record_path(entry.key)
    record.write_text(record.read_text().replace('"sha256"', '"sha-256"'))
    finding = verify(mirror_root).json()["findings"][0]
    assert finding["status"] == "damaged record"
    assert "field 'sha256' is missing" in finding["detail"]


def test_partial_downloads_are_reported_but_do_not_fail(mirror_root: Path) -> None:
    store = MirrorStore(mirror_root)
    add_box(store, "flatcar-stable", "3815.2.0")
    part = store.part_path(BoxKey("flatcar-stable", "3760.2.0", "virtualbox"))
    part.parent.mkdir(parents=True)
    part.write_bytes(b"x" * 10)
    orphan = store.artifact_path(BoxKey("flatcar-stable", "3700.0.0", "virtualbox"))
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"a box nobody recorded")
    run = verify(mirror_root)
    assert run.returncode == 0, run.stderr
    notes = {f["status"]: f["path"] for f in run.json()["findings"] if f["status"] != "ok"}
    assert notes == {"partial download": str(part), "no record": str(orphan)}


def test_an_empty_mirror_verifies(mirror_root: Path) -> None:
    run = verify(mirror_root)
    assert run.returncode == 0
    assert run.json()["checked"] == 0


def test_staging_lets_one_writer_at_a_time_and_a_waiter_sees_the_commit(mirror_root: Path) -> None:
    store = MirrorStore(mirror_root)
    key = BoxKey("flatcar-stable", "3815.2.0", "virtualbox")
    waited = threading.Event()
    seen_by_second: list[object] = []

    def second() -> None:
        with store.staging(key, on_wait=waited.set) as part:
            seen_by_second.append(store.get(key))
            seen_by_second.append(part.seek(0, 2))

    with store.staging(key) as part:
        thread = threading.Thread(target=second)
        thread.start()
        assert waited.wait(10)
        part.write(b"box bytes")
        part.flush()
        store.commit(key, Path(part.name), sha256="0" * 64)
    thread.join(10)
    assert seen_by_second[0] is not None and seen_by_second[1] == 0  # a fresh, empty part
    assert not store.part_path(key).exists()  # the empty part was removed on exit


def test_a_named_root_that_does_not_exist_is_refused_by_list_and_verify(tmp_path: Path) -> None:
    """A typo in --root or $LAB_MIRROR_ROOT must not read as an empty mirror (serve refuses it too)."""
    missing = tmp_path / "no-such-mirror"
    for run in (
        lab("mirror", "list", "--root", missing),
        lab("mirror", "verify", env={"LAB_MIRROR_ROOT": str(missing)}),
    ):
        assert run.returncode == ExitCode.USAGE, run.stderr
        assert f"mirror root {missing} does not exist" in run.stderr
    assert not missing.exists()


def test_the_default_root_before_any_import_is_an_empty_mirror(tmp_path: Path) -> None:
    """Nothing imported yet: the per-user default root does not exist, and that is no error."""
    env = {"HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "data"), "LAB_MIRROR_ROOT": ""}
    run = lab("mirror", "list", "--json", cwd=tmp_path, env=env)
    assert run.returncode == ExitCode.OK, run.stderr
    assert run.json() == {
        "root": str(tmp_path / "data" / "coreos-lab" / "boxes"),
        "boxes": [],
        "images": [],
        "left_out": [],
    }


def test_list_prints_a_table_with_a_column_for_each_field(mirror_root: Path, tmp_path: Path) -> None:
    store = MirrorStore(mirror_root)
    big = bytes(1536 * 1024)  # 1.5 MiB
    add_box(store, "flatcar-stable", "3815.2.0")
    add_box(store, "coreos-stable", "1235.9.0", provider="libvirt", data=big)
    small = store.artifact_path(BoxKey("flatcar-stable", "3815.2.0", "virtualbox"))
    run = lab("mirror", "list", "--root", mirror_root, "--base-url", "http://10.0.2.2:8080")
    assert run.returncode == 0, run.stderr
    header, *rows = run.stdout.splitlines()
    columns = ["name", "version", "provider", "architecture", "size", "sha256", "metadata_url", "box_url"]
    assert header.split() == columns
    # Every value starts where its column's title does (sizes have a space, so split() alone would not do).
    starts = [header.index(column) for column in columns]
    cells = [[row[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)] for row in rows]
    base = "http://10.0.2.2:8080"
    coreos, flatcar = f"{base}/coreos-stable", f"{base}/flatcar-stable"
    assert cells == [
        ["coreos-stable", "1235.9.0", "libvirt", "amd64", "1.5 MiB", sha256(big)[:12], coreos,
         f"{coreos}/1235.9.0/libvirt-amd64.box"],
        ["flatcar-stable", "3815.2.0", "virtualbox", "amd64", f"{small.stat().st_size} B",
         sha256(small.read_bytes())[:12], flatcar, f"{flatcar}/3815.2.0/virtualbox-amd64.box"],
    ]  # fmt: skip
    empty = tmp_path / "empty"
    empty.mkdir()
    none = lab("mirror", "list", "--root", empty)
    assert none.returncode == 0 and none.stdout == "" and f"no boxes in {empty}" in none.stderr
