"""Hostile input to the box mirror's store, through the real CLI: `lab mirror import`, `list` and `verify` refuse it
with an exit code and a message naming the file, field or value (never `unexpected …`), stay within memory,
never list, verify or advertise what the server would not send, and leave nothing behind on a failed write."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import tracemalloc
from pathlib import Path

import pytest
import zstandard
from harness.boxes import add_box, make_box
from harness.cli import LabRun, lab
from harness.oci_images import build_random_image, tar_directory
from harness.upstream import ReleaseUpstream, keys, upstream
from hypothesis import given
from hypothesis import strategies as st

from coreos_lab.errors import BadInput, ExitCode
from coreos_lab.json_input import MAX_DEPTH, parse_json
from coreos_lab.mirror.images.importer import MAX_MEMBERS
from coreos_lab.mirror.images.manifests import OCI_INDEX, OCI_MANIFEST
from coreos_lab.mirror.images.store import REF_NAME, ImageStore
from coreos_lab.mirror.importer import box_provider
from coreos_lab.mirror.store import BoxKey, MirrorStore, check_name, check_provider, check_version

__all__ = ["keys", "upstream"]  # the fixtures, imported for this module's tests
pytestmark = pytest.mark.integration

DEEP = [b"[" * 20_000, b'{"a":' * 20_000, b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1)]


def tar_box(files: dict[str, bytes | tuple[int, bytes]], compress: str = "gz") -> bytes:
    """A tar box; a member given as (size, byte) is that byte repeated, streamed rather than held."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=f"w:{compress}" if compress != "zst" else "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            if isinstance(data, tuple):
                info.size, fill = data
                tar.addfile(info, _Repeat(fill, info.size))
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    return zstandard.ZstdCompressor(write_checksum=True).compress(raw) if compress == "zst" else raw


class _Repeat(io.RawIOBase):
    def __init__(self, fill: bytes, size: int):
        self.fill, self.left = fill, size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return self.fill * n


def import_box(root: Path, box: Path, *args: str | os.PathLike[str], prefix: tuple[str, ...] = ()) -> LabRun:
    return lab("mirror", "import", box, "--root", root, *args, prefix=prefix)


def assert_refused(run: LabRun, code: ExitCode, *named: str) -> None:
    assert run.returncode == code, run.stderr
    assert "unexpected" not in run.stderr, run.stderr
    for text in named:
        assert text in run.stderr, run.stderr


# -- deeply nested JSON: exit 2 naming the document -------------------------------------------------------


@given(depth=st.integers(0, 3000), opener=st.sampled_from(["[", '{"k":', '[{"k":']), tail=st.binary(max_size=8))
def test_json_of_any_depth_is_a_document_or_bad_input_naming_it(depth: int, opener: str, tail: bytes) -> None:
    data = opener.encode() * depth + tail
    try:
        parse_json(data, "the-source.json", "box metadata")
    except BadInput as exc:
        assert exc.message.startswith("the-source.json: box metadata ")
    assert parse_json(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH, "ok.json") is not None


@pytest.mark.parametrize("deep", DEEP, ids=["arrays", "objects", "one-too-deep"])
def test_deeply_nested_metadata_is_refused_naming_it(mirror_root: Path, tmp_path: Path, deep: bytes) -> None:
    box = tmp_path / "x.box"
    box.write_bytes(make_box("flatcar-stable", "1.0.0"))
    meta = tmp_path / "box.json"
    meta.write_bytes(deep)
    run = import_box(mirror_root, box, "--metadata", meta)
    assert_refused(run, ExitCode.USAGE, f"{meta}: box metadata ")
    assert list(mirror_root.iterdir()) == []


def test_a_deeply_nested_metadata_json_inside_a_box_is_refused_naming_it(mirror_root: Path, tmp_path: Path) -> None:
    box = tmp_path / "deep.box"
    box.write_bytes(tar_box({"metadata.json": DEEP[0], "box.ovf": b"<x/>"}))
    run = import_box(mirror_root, box, "--name", "flatcar-stable", "--version", "1.0.0")
    assert_refused(run, ExitCode.USAGE, f"{box}: member metadata.json nests deeper than {MAX_DEPTH} levels")


def test_a_deeply_nested_record_is_reported_by_list_and_verify(mirror_root: Path) -> None:
    store = MirrorStore(mirror_root)
    entry = add_box(store, "flatcar-stable", "1.0.0")
    add_box(store, "flatcar-stable", "1.1.0")
    record = store.record_path(entry.key)
    record.write_bytes(DEEP[0])
    listed = lab("mirror", "list", "--root", mirror_root, "--json")
    assert_refused(listed, ExitCode.ERROR)
    assert [b["version"] for b in listed.json()["boxes"]] == ["1.1.0"]
    (left_out,) = listed.json()["left_out"]
    assert left_out["path"] == str(record) and "nests deeper" in left_out["reason"]
    verified = lab("mirror", "verify", "--root", mirror_root, "--json")
    assert_refused(verified, ExitCode.ERROR)
    (finding,) = [f for f in verified.json()["findings"] if f["status"] != "ok"]
    assert finding["status"] == "damaged record" and "nests deeper" in finding["detail"]


def test_a_deeply_nested_image_catalog_is_reported_by_verify(mirror_root: Path) -> None:
    index = mirror_root / "images" / "index.json"
    index.parent.mkdir()
    index.write_bytes(DEEP[1])
    run = lab("mirror", "verify", "--root", mirror_root, "--json")
    assert_refused(run, ExitCode.ERROR)
    (finding,) = run.json()["findings"]
    assert finding["status"] == "damaged catalog" and str(index) in finding["detail"]


def test_a_deeply_nested_upstream_json_is_refused_naming_its_url(mirror_root: Path, upstream: ReleaseUpstream) -> None:
    release = upstream.publish("flatcar", "stable", "3815.2.0", json_override=DEEP[1])
    run = lab("mirror", "fetch", "--root", mirror_root, "--upstream", upstream.url)
    assert_refused(run, ExitCode.USAGE, f"{upstream.url}/stable/amd64-usr/3815.2.0/", "box metadata nests deeper")
    assert release.stem in run.stderr
    assert MirrorStore(mirror_root).entries() == []


def test_indexes_nested_without_end_are_a_damaged_manifest(mirror_root: Path) -> None:
    """1100 indexes, each naming the next: refused at a fixed depth, not by running out of stack."""
    images = ImageStore(mirror_root)
    inner = {"mediaType": OCI_MANIFEST, "digest": images.write_blob(b"{}"), "size": 2}
    for _ in range(1100):
        data = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [inner]}).encode()
        inner = {"mediaType": OCI_INDEX, "digest": images.write_blob(data), "size": len(data)}
    catalog = {"schemaVersion": 2, "manifests": [inner | {"annotations": {REF_NAME: "coreos/etcd:deep"}}]}
    images.index_path.write_text(json.dumps(catalog))
    run = lab("mirror", "verify", "--root", mirror_root, "--json")
    assert_refused(run, ExitCode.ERROR)
    (damaged,) = [f for f in run.json()["findings"] if f["status"] == "damaged manifest"]
    assert damaged["image"] == "coreos/etcd:deep" and "nest more than" in damaged["detail"]
    listed = lab("mirror", "list", "--root", mirror_root, "--json")
    assert listed.returncode == 0, listed.stderr
    assert [i["tag"] for i in listed.json()["images"]] == ["deep"]


# -- names longer than a file name may be: exit 2 naming the value ----------------------------------------


@pytest.mark.parametrize(
    ("option", "value"),
    [("--name", "a" * 300), ("--version", "1." + "0" * 300), ("--provider", "v" * 300), ("--architecture", "x" * 256)],
)
def test_names_too_long_for_a_file_are_refused(mirror_root: Path, tmp_path: Path, option: str, value: str) -> None:
    box = tmp_path / "x.box"
    box.write_bytes(make_box("flatcar-stable", "1.0.0"))
    options = {"--name": "flatcar-stable", "--version": "1.0.0", "--provider": "virtualbox"} | {option: value}
    run = import_box(mirror_root, box, *(a for pair in options.items() for a in pair))
    assert_refused(run, ExitCode.USAGE, repr(value[:32]), f"({len(value)} characters)")
    assert list(mirror_root.iterdir()) == []


def test_a_name_too_long_in_metadata_is_refused_naming_the_file(mirror_root: Path, tmp_path: Path) -> None:
    data = make_box("flatcar-stable", "1.0.0")
    box = tmp_path / "x.box"
    box.write_bytes(data)
    provider = {"name": "virtualbox", "checksum_type": "sha256", "checksum": hashlib.sha256(data).hexdigest()}
    meta = tmp_path / "box.json"
    meta.write_text(json.dumps({"name": "n" * 1000, "versions": [{"version": "1.0.0", "providers": [provider]}]}))
    assert_refused(import_box(mirror_root, box, "--metadata", meta), ExitCode.USAGE, str(meta), "(1000 characters)")


def test_a_root_with_a_name_too_long_is_refused_naming_it(tmp_path: Path) -> None:
    box = tmp_path / "x.box"
    box.write_bytes(make_box("flatcar-stable", "1.0.0"))
    root = tmp_path / ("r" * 300)
    run = import_box(root, box, "--name", "flatcar-stable", "--version", "1.0.0")
    assert_refused(run, ExitCode.USAGE, f"cannot write {root}", "File name too long")


@pytest.mark.parametrize("name", ["new", "v2", "0123456789abcdef0123456789abcdef", "images"])
def test_names_the_server_cannot_serve_are_refused(mirror_root: Path, tmp_path: Path, name: str) -> None:
    box = tmp_path / "x.box"
    box.write_bytes(make_box(name, "1.0.0"))
    run = import_box(mirror_root, box, "--name", name, "--version", "1.0.0")
    assert_refused(run, ExitCode.USAGE, repr(name))
    assert list(mirror_root.iterdir()) == []


@pytest.mark.parametrize("option", ["--name", "--version", "--provider", "--architecture"])
def test_a_trailing_newline_is_no_part_of_a_name(mirror_root: Path, tmp_path: Path, option: str) -> None:
    box = tmp_path / "x.box"
    box.write_bytes(make_box("flatcar-stable", "1.0.0"))
    options = {"--name": "flatcar-stable", "--version": "1.0.0", "--provider": "virtualbox"}
    options[option] = options.get(option, "amd64") + "\n"
    run = import_box(mirror_root, box, *(a for pair in options.items() for a in pair))
    assert_refused(run, ExitCode.USAGE, repr(options[option]))
    assert list(mirror_root.iterdir()) == []


_NAME = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,300}", fullmatch=True)
_PROVIDER = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,300}", fullmatch=True)


@given(name=_NAME, version=st.from_regex(r"[0-9]{1,200}(\.[0-9]{1,100}){0,3}", fullmatch=True), provider=_PROVIDER)
def test_every_accepted_key_fits_in_file_names(name: str, version: str, provider: str) -> None:
    try:
        key = BoxKey(check_name(name), check_version(version), check_provider(provider), check_provider(provider))
    except BadInput as exc:
        assert "characters): at most" in exc.message
        return
    record_temp = f".{key.stem}.record.json.12345678.tmp"  # fsutil.write_temp's name for the record
    assert max(len(part.encode()) for part in (*key.relpath.split("/"), record_temp, f"{key.stem}.box.part")) <= 255


# -- bounds: a box's metadata.json is read as a bounded prefix ----------------------------------------------


def test_a_metadata_json_unpacking_to_a_gigabyte_is_refused_within_bounded_memory(
    mirror_root: Path, tmp_path: Path
) -> None:
    """1 GiB of JSON whitespace before the object: the old import read it whole (3 GB at its peak). Here the
    process may not even map 600 MB."""
    box = tmp_path / "bomb.box"
    box.write_bytes(tar_box({"metadata.json": (1 << 30, b" "), "box.ovf": b"<x/>"}))
    assert box.stat().st_size < 2 << 20
    run = import_box(
        mirror_root, box, "--name", "flatcar-stable", "--version", "1.0.0", prefix=("prlimit", f"--as={600 << 20}")
    )
    assert_refused(run, ExitCode.USAGE, f"{box}: member metadata.json has more than")
    assert list(mirror_root.iterdir()) == []


def test_a_box_of_many_empty_members_is_read_within_bounded_memory(tmp_path: Path) -> None:
    """tarfile keeps every member it has read (50 000 of them: some 22 MB); a streamed box forgets each after
    its turn. Measured in-process, with tracemalloc: the peak of what Python allocated while reading it."""
    box = tmp_path / "many.box"
    with tarfile.open(box, mode="w:gz", compresslevel=1, format=tarfile.USTAR_FORMAT) as tar:
        tar.addfile(_info("metadata.json", 26), io.BytesIO(b'{"provider": "virtualbox"}'))
        empty = _info("d/0", 0)
        for i in range(50_000):
            empty.name = f"d/{i}"
            tar.addfile(empty)
    tracemalloc.start()
    try:
        assert box_provider(box, "gzip") == ("virtualbox", None)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, peak


def test_an_image_archive_of_too_many_members_is_refused(mirror_root: Path, tmp_path: Path) -> None:
    archive = tmp_path / "many.tar.gz"
    with tarfile.open(archive, mode="w:gz", compresslevel=1, format=tarfile.USTAR_FORMAT) as tar:
        empty = _info("d/0", 0)
        for i in range(MAX_MEMBERS + 1):
            empty.name = f"d/{i}"
            tar.addfile(empty)
    run = lab("mirror", "image", "import", archive, "--root", mirror_root)
    assert_refused(run, ExitCode.USAGE, f"{archive}: more than {MAX_MEMBERS} members")
    assert list(mirror_root.iterdir()) == []


def _info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    return info


# -- zstd boxes are read to their end -----------------------------------------------------------------------


def _zstd_box(tmp_path: Path) -> bytes:
    return tar_box(
        {"metadata.json": b'{"provider": "libvirt"}', "box.img": os.urandom(200_000), "Vagrantfile": b""}, "zst"
    )


def test_a_whole_zstd_box_is_imported_with_its_provider(mirror_root: Path, tmp_path: Path) -> None:
    box = tmp_path / "ok.box"
    box.write_bytes(_zstd_box(tmp_path))
    run = import_box(mirror_root, box, "--name", "flatcar-stable", "--version", "1.0.0", "--json")
    assert run.returncode == 0, run.stderr
    assert run.json()["box"]["provider"] == "libvirt"


@pytest.mark.parametrize("damage", ["flipped", "truncated", "trailing junk"])
def test_a_damaged_zstd_box_is_refused(mirror_root: Path, tmp_path: Path, damage: str) -> None:
    data = bytearray(_zstd_box(tmp_path))
    if damage == "flipped":
        data[len(data) // 2] ^= 0xFF
    elif damage == "truncated":
        del data[-1000:]
    else:
        data += b"junk"
    box = tmp_path / "bad.box"
    box.write_bytes(bytes(data))
    run = import_box(mirror_root, box, "--name", "flatcar-stable", "--version", "1.0.0")
    assert_refused(run, ExitCode.USAGE, f"cannot read box {box} (truncated or damaged?)")
    assert list(mirror_root.iterdir()) == []


# -- honesty of list and verify -----------------------------------------------------------------------------


def test_a_box_leading_out_of_the_root_is_neither_listed_nor_verified_ok(mirror_root: Path, tmp_path: Path) -> None:
    store = MirrorStore(mirror_root)
    entry = add_box(store, "flatcar-stable", "1.0.0")
    add_box(store, "flatcar-stable", "1.1.0")
    box = store.artifact_path(entry.key)
    outside = tmp_path / "outside.box"
    box.rename(outside)
    box.symlink_to(outside)  # the very bytes the record names, but not inside the root
    listed = lab("mirror", "list", "--root", mirror_root, "--json")
    assert_refused(listed, ExitCode.ERROR)
    assert [b["version"] for b in listed.json()["boxes"]] == ["1.1.0"]
    assert listed.json()["left_out"] == [
        {"path": str(box), "reason": "a symlink leading out of the mirror root (never served)"}
    ]
    assert "left out of the catalog" in lab("mirror", "list", "--root", mirror_root).stderr
    verified = lab("mirror", "verify", "--root", mirror_root, "--json")
    assert_refused(verified, ExitCode.ERROR)
    statuses = {f["path"]: f["status"] for f in verified.json()["findings"]}
    assert statuses[str(box)] == "outside the root"
    assert store.entries() == [store.get(BoxKey("flatcar-stable", "1.1.0", "virtualbox"))]


NO_DAC = ("setpriv", "--bounding-set", "-dac_override,-dac_read_search")  # root as a user: file modes apply


def test_an_unreadable_version_directory_is_reported_by_list_and_verify(mirror_root: Path) -> None:
    store = MirrorStore(mirror_root)
    add_box(store, "flatcar-stable", "1.0.0")
    add_box(store, "flatcar-stable", "1.1.0")
    hidden = store.version_dir("flatcar-stable", "1.0.0")
    hidden.chmod(0)
    try:
        listed = lab("mirror", "list", "--root", mirror_root, "--json", prefix=NO_DAC)
        verified = lab("mirror", "verify", "--root", mirror_root, "--json", prefix=NO_DAC)
        empty = lab("mirror", "verify", "--root", mirror_root, prefix=NO_DAC)
    finally:
        hidden.chmod(0o755)
    assert_refused(listed, ExitCode.ERROR)
    assert [b["version"] for b in listed.json()["boxes"]] == ["1.1.0"]
    assert [p["path"] for p in listed.json()["left_out"]] == [str(hidden)]
    assert_refused(verified, ExitCode.ERROR)
    findings = {f["path"]: f["status"] for f in verified.json()["findings"]}
    assert findings[str(hidden)] == "unreadable directory"
    assert verified.json()["checked"] == 2 and verified.json()["failed"] == 1
    assert_refused(empty, ExitCode.ERROR, f"unreadable directory {hidden}: Permission denied")


def test_an_unreadable_image_directory_is_reported_by_list_and_verify(mirror_root: Path) -> None:
    images = ImageStore(mirror_root)
    images.write_blob(b"{}")
    images.dir.chmod(0)
    try:
        listed = lab("mirror", "list", "--root", mirror_root, "--json", prefix=NO_DAC)
        verified = lab("mirror", "verify", "--root", mirror_root, "--json", prefix=NO_DAC)
    finally:
        images.dir.chmod(0o755)
    assert_refused(listed, ExitCode.ERROR)
    assert [p["path"] for p in listed.json()["left_out"]] == [str(images.index_path)]
    assert "Permission denied" in listed.json()["left_out"][0]["reason"]
    assert_refused(verified, ExitCode.ERROR)
    statuses = {f["path"]: f["status"] for f in verified.json()["findings"]}
    assert statuses == {str(images.index_path): "damaged catalog", str(images.blobs_dir): "unreadable directory"}


def test_an_image_blob_leading_out_of_the_root_is_not_verified_ok(mirror_root: Path, tmp_path: Path) -> None:
    images = ImageStore(mirror_root)
    blob = images.blob_path(images.write_blob(b"{}"))
    outside = tmp_path / "blob"
    blob.rename(outside)
    blob.symlink_to(outside)
    run = lab("mirror", "verify", "--root", mirror_root, "--json")
    assert_refused(run, ExitCode.ERROR)
    assert [(f["path"], f["status"]) for f in run.json()["findings"]] == [(str(blob), "outside the root")]


# -- leftovers: a failed write leaves nothing, and names the file -------------------------------------------


def _on_small_tmpfs(root: Path, listing: Path, size: int, fill: int, *, read_only: bool = False) -> tuple[str, ...]:
    """A prefix that runs `lab` in a mount namespace of its own with `root` a tmpfs of `size` bytes, of which
    `fill` are taken; afterwards every path below `root` is written to `listing` (the tmpfs goes with the
    namespace)."""
    script = (
        'root=$1 listing=$2 size=$3 fill=$4 ro=$5; shift 5; mount -t tmpfs -o size="$size" tmpfs "$root" || exit 99; '
        'head -c "$fill" /dev/zero > "$root/.filler"; if [ "$ro" = 1 ]; then mount -o remount,ro "$root"; fi; '
        '"$@"; rc=$?; find "$root" -mindepth 1 ! -name .filler > "$listing"; exit $rc'
    )
    return (
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
        "sh",
        str(root),
        str(listing),
        str(size),
        str(fill),
        "1" if read_only else "0",
    )


@pytest.mark.parametrize(
    ("fill", "padding", "fails_at"),
    [(60 << 10, 0, "virtualbox-amd64.record.json"), (40 << 10, 64 << 10, "virtualbox-amd64.box.part")],
    ids=["record write", "box copy"],
)
def test_a_full_disk_leaves_nothing_behind_and_names_the_file(
    mirror_root: Path, tmp_path: Path, fill: int, padding: int, fails_at: str
) -> None:
    box = tmp_path / "x.box"
    box.write_bytes(tar_box({"metadata.json": b'{"provider": "virtualbox"}', "disk": os.urandom(padding)}))
    assert (box.stat().st_size <= 4096) == (padding == 0)  # one page of the tmpfs, or more than is left
    listing = tmp_path / "listing"
    prefix = _on_small_tmpfs(mirror_root, listing, 64 << 10, fill)
    run = import_box(mirror_root, box, "--name", "flatcar-stable", "--version", "1.0.0", prefix=prefix)
    version_dir = mirror_root / "flatcar-stable" / "1.0.0"
    assert_refused(run, ExitCode.ERROR, f"cannot write {version_dir}/", fails_at, "No space left on device")
    assert listing.read_text() == ""


def test_a_full_disk_during_an_image_import_names_the_blob_and_leaves_no_part(
    mirror_root: Path, tmp_path: Path
) -> None:
    build_random_image(tmp_path / "layout", "coreos/etcd:big", [96 << 10])  # more than the tmpfs holds
    archive = tmp_path / "image.tar"
    tar_directory(tmp_path / "layout", archive)
    listing = tmp_path / "listing"
    prefix = _on_small_tmpfs(mirror_root, listing, 64 << 10, 0)
    run = lab("mirror", "image", "import", archive, "--root", mirror_root, prefix=prefix)
    assert_refused(run, ExitCode.ERROR, f"cannot write {mirror_root}/images/blobs/sha256/", ".part: No space left")
    left = listing.read_text().split()
    assert not [p for p in left if p.endswith((".part", "index.json"))], left  # no half blob, nothing tagged


def test_a_read_only_root_names_the_path(mirror_root: Path, tmp_path: Path) -> None:
    box = tmp_path / "x.box"
    box.write_bytes(make_box("flatcar-stable", "1.0.0"))
    prefix = _on_small_tmpfs(mirror_root, tmp_path / "listing", 64 << 10, 0, read_only=True)
    run = import_box(mirror_root, box, "--name", "flatcar-stable", "--version", "1.0.0", prefix=prefix)
    assert_refused(run, ExitCode.ERROR, f"cannot write {mirror_root}/flatcar-stable", "Read-only file system")


@pytest.mark.parametrize("command", [["list"], ["verify"], ["serve", "--port", "0"]])
def test_a_root_name_too_long_for_the_file_system_is_bad_input(tmp_path: Path, command: list[str]) -> None:
    root = tmp_path / ("r" * 300)
    run = lab("mirror", *command, "--root", root)
    assert run.returncode == ExitCode.USAGE, run.stderr
    assert f"mirror root {root}: File name too long" in run.stderr
    assert "unexpected" not in run.stderr
