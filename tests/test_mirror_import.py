"""`lab mirror import`: boxes downloaded some other way, with or without Vagrant box metadata."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest
from harness.boxes import make_box
from harness.cli import lab

from coreos_lab.errors import ExitCode
from coreos_lab.mirror.store import BoxKey, MirrorStore


def metadata_for(
    box: bytes, name: str = "flatcar-stable", version: str = "3815.2.0", **provider: Any
) -> dict[str, Any]:
    prov = {
        "name": "virtualbox",
        "url": "https://bincache.flatcar-linux.net/images/amd64/3815.2.0/flatcar_production_vagrant.box",
        "checksum_type": "sha256",
        "checksum": hashlib.sha256(box).hexdigest(),
        "architecture": "amd64",
    } | provider
    return {"name": name, "versions": [{"version": version, "providers": [prov]}]}


@pytest.fixture
def box(tmp_path: Path) -> tuple[Path, bytes]:
    data = make_box("flatcar-stable", "3815.2.0")
    path = tmp_path / "flatcar_production_vagrant.box"
    path.write_bytes(data)
    return path, data


def write_json(path: Path, doc: object) -> Path:
    path.write_text(json.dumps(doc))
    return path


def files_under(root: Path) -> list[Path]:
    return sorted(root.rglob("*"))


def test_import_with_metadata(mirror_root: Path, box: tuple[Path, bytes], tmp_path: Path) -> None:
    path, data = box
    meta = write_json(tmp_path / "box.json", metadata_for(data))
    run = lab("mirror", "import", path, "--metadata", meta, "--root", mirror_root, "--json")
    assert run.returncode == 0, run.stderr
    assert run.json()["action"] == "added"
    store = MirrorStore(mirror_root)
    (entry,) = store.entries()
    assert entry.key == BoxKey("flatcar-stable", "3815.2.0", "virtualbox", "amd64")
    assert store.artifact_path(entry.key).read_bytes() == data
    assert entry.sha256 == hashlib.sha256(data).hexdigest()
    assert not store.part_path(entry.key).exists()


@pytest.mark.parametrize("kind", ["md5", "sha1", "sha384", "sha512"])
def test_every_vagrant_checksum_type_is_checked(
    mirror_root: Path, box: tuple[Path, bytes], tmp_path: Path, kind: str
) -> None:
    path, data = box
    meta = write_json(
        tmp_path / "box.json", metadata_for(data, checksum_type=kind, checksum=hashlib.new(kind, data).hexdigest())
    )
    assert lab("mirror", "import", path, "--metadata", meta, "--root", mirror_root).returncode == 0
    wrong = write_json(
        tmp_path / "wrong.json",
        metadata_for(data, version="1.0.0", checksum_type=kind, checksum="0" * len(hashlib.new(kind).hexdigest())),
    )
    run = lab("mirror", "import", path, "--metadata", wrong, "--root", mirror_root)
    assert run.returncode == ExitCode.USAGE
    assert f"{kind} is {hashlib.new(kind, data).hexdigest()}" in run.stderr


def test_importing_the_same_box_twice_changes_nothing(
    mirror_root: Path, box: tuple[Path, bytes], tmp_path: Path
) -> None:
    path, data = box
    meta = write_json(tmp_path / "box.json", metadata_for(data))
    assert lab("mirror", "import", path, "--metadata", meta, "--root", mirror_root).returncode == 0
    store = MirrorStore(mirror_root)
    record = store.record_path(BoxKey("flatcar-stable", "3815.2.0", "virtualbox"))
    before = record.read_text()
    again = lab("mirror", "import", path, "--metadata", meta, "--root", mirror_root, "--json")
    assert again.returncode == 0, again.stderr
    assert again.json()["action"] == "unchanged"
    assert record.read_text() == before


def test_a_different_box_for_an_existing_key_needs_force(
    mirror_root: Path, box: tuple[Path, bytes], tmp_path: Path
) -> None:
    path, data = box
    assert (
        lab(
            "mirror", "import", path, "--name", "flatcar-stable", "--version", "3815.2.0", "--root", mirror_root
        ).returncode
        == 0
    )
    store = MirrorStore(mirror_root)
    (first,) = store.entries()
    other = tmp_path / "rebuilt.box"
    other.write_bytes(make_box("flatcar-stable", "3815.2.0-rebuilt"))
    args = ("mirror", "import", other, "--name", "flatcar-stable", "--version", "3815.2.0", "--root", mirror_root)
    refused = lab(*args)
    assert refused.returncode == ExitCode.USAGE
    assert "already in the mirror" in refused.stderr and "--force" in refused.stderr
    assert store.entries() == [first]
    assert store.artifact_path(first.key).read_bytes() == data
    forced = lab(*args, "--force", "--json")
    assert forced.returncode == 0, forced.stderr
    assert forced.json()["action"] == "replaced"
    assert store.artifact_path(first.key).read_bytes() == other.read_bytes()


def test_without_metadata_the_provider_comes_from_the_box(mirror_root: Path, tmp_path: Path) -> None:
    path = tmp_path / "libvirt.box"
    path.write_bytes(make_box("coreos-alpha", "1.0.0", provider="libvirt"))
    run = lab("mirror", "import", path, "--name", "coreos-alpha", "--version", "1.0.0", "--root", mirror_root, "--json")
    assert run.returncode == 0, run.stderr
    assert (run.json()["box"]["provider"], run.json()["box"]["architecture"]) == ("libvirt", "amd64")


def test_metadata_with_several_boxes_needs_a_choice(mirror_root: Path, box: tuple[Path, bytes], tmp_path: Path) -> None:
    path, data = box
    doc = metadata_for(data)
    doc["versions"].append({"version": "3760.2.0", "providers": [dict(doc["versions"][0]["providers"][0])]})
    meta = write_json(tmp_path / "box.json", doc)
    ambiguous = lab("mirror", "import", path, "--metadata", meta, "--root", mirror_root)
    assert ambiguous.returncode == ExitCode.USAGE
    assert "2 boxes match" in ambiguous.stderr and "--version" in ambiguous.stderr
    assert files_under(mirror_root) == []
    chosen = lab("mirror", "import", path, "--metadata", meta, "--version", "3815.2.0", "--root", mirror_root)
    assert chosen.returncode == 0, chosen.stderr


BAD_METADATA: list[tuple[str, object, str]] = [
    ("not-json", "{not json", "box metadata is not JSON: Expecting property name"),
    ("not-object", ["flatcar-stable"], "box metadata must be a JSON object, got list"),
    ("no-name", {"versions": []}, "field name is missing"),
    ("no-versions", {"name": "flatcar-stable"}, "field versions is missing"),
    ("no-version", {"name": "flatcar-stable", "versions": [{"providers": []}]}, "field versions[0].version is missing"),
    (
        "no-providers",
        {"name": "flatcar-stable", "versions": [{"version": "1.0"}]},
        "field versions[0].providers is missing",
    ),
    (
        "no-provider-name",
        {"name": "flatcar-stable", "versions": [{"version": "1.0", "providers": [{"url": "x"}]}]},
        "field versions[0].providers[0].name is missing",
    ),
    (
        "bad-version",
        {
            "name": "flatcar-stable",
            "versions": [
                {
                    "version": "latest!",
                    "providers": [{"name": "virtualbox", "checksum_type": "md5", "checksum": "0" * 32}],
                }
            ],
        },
        "invalid box version 'latest!'",
    ),
]


@pytest.mark.parametrize(("label", "doc", "message"), BAD_METADATA, ids=[b[0] for b in BAD_METADATA])
def test_malformed_metadata_is_refused(
    mirror_root: Path, box: tuple[Path, bytes], tmp_path: Path, label: str, doc: object, message: str
) -> None:
    path, _ = box
    meta = tmp_path / f"{label}.json"
    meta.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    run = lab("mirror", "import", path, "--metadata", meta, "--root", mirror_root)
    assert run.returncode == ExitCode.USAGE, run.stderr
    assert str(meta) in run.stderr and message in run.stderr
    assert files_under(mirror_root) == []


@pytest.mark.parametrize(
    ("provider_edit", "message"),
    [
        (
            {"checksum_type": "crc32"},
            "providers[0].checksum_type: unknown checksum_type 'crc32' (Vagrant knows md5, sha1, sha256, sha384, sha512)",
        ),
        ({"checksum_type": None}, "providers[0].checksum_type is missing"),
        ({"checksum": None}, "providers[0].checksum is missing"),
        ({"checksum": "xyz"}, "providers[0].checksum: checksum 'xyz' is not a sha256 hex digest"),
        ({"checksum": "0" * 64}, "(wrong checksum)"),
    ],
)
def test_bad_checksums_are_refused(
    mirror_root: Path, box: tuple[Path, bytes], tmp_path: Path, provider_edit: dict[str, object], message: str
) -> None:
    path, data = box
    doc = metadata_for(data)
    provider = doc["versions"][0]["providers"][0]
    provider.update(provider_edit)
    for field, value in provider_edit.items():
        if value is None:
            del provider[field]
    meta = write_json(tmp_path / "box.json", doc)
    run = lab("mirror", "import", path, "--metadata", meta, "--root", mirror_root)
    assert run.returncode == ExitCode.USAGE, run.stderr
    assert message in run.stderr
    assert files_under(mirror_root) == []


def test_a_name_mismatch_is_refused(mirror_root: Path, box: tuple[Path, bytes], tmp_path: Path) -> None:
    path, data = box
    meta = write_json(tmp_path / "box.json", metadata_for(data))
    run = lab("mirror", "import", path, "--metadata", meta, "--name", "coreos-stable", "--root", mirror_root)
    assert run.returncode == ExitCode.USAGE
    assert "field name is 'flatcar-stable', expected 'coreos-stable' (box name mismatch)" in run.stderr
    assert files_under(mirror_root) == []


@pytest.mark.parametrize("case", ["missing", "directory", "not-a-box", "missing-metadata"])
def test_unreadable_boxes_and_files_are_refused(mirror_root: Path, tmp_path: Path, case: str) -> None:
    target = tmp_path / "thing.box"
    extra: list[str | Path] = ["--name", "flatcar-stable", "--version", "1.0.0"]
    expected = {
        "missing": f"cannot read box {target}: No such file or directory",
        "directory": f"File '{target}' is a directory",
        "not-a-box": f"{target} is not a box",
        "missing-metadata": f"cannot read box metadata {tmp_path / 'nope.json'}",
    }[case]
    if case == "directory":
        target.mkdir()
    elif case == "not-a-box":
        target.write_text("<html>404 Not Found</html>\n" * 30)
    elif case == "missing-metadata":
        target.write_bytes(make_box())
        extra = ["--metadata", tmp_path / "nope.json"]
    run = lab("mirror", "import", target, *extra, "--root", mirror_root)
    assert run.returncode == ExitCode.USAGE, run.stderr
    assert expected in run.stderr
    assert files_under(mirror_root) == []


def test_a_truncated_box_fails_its_checksum(mirror_root: Path, box: tuple[Path, bytes], tmp_path: Path) -> None:
    path, data = box
    meta = write_json(tmp_path / "box.json", metadata_for(data))
    path.write_bytes(data[: len(data) // 2])
    run = lab("mirror", "import", path, "--metadata", meta, "--root", mirror_root)
    assert run.returncode == ExitCode.USAGE
    assert "(wrong checksum)" in run.stderr
    assert files_under(mirror_root) == []


def tar_gz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for member, data in files.items():
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize("case", ["provider mismatch", "cut short", "cut in the gzip trailer", "no metadata.json"])
def test_without_metadata_the_box_itself_is_checked(mirror_root: Path, tmp_path: Path, case: str) -> None:
    """Without a checksum to compare, the archive must be whole and match the provider it is filed under."""
    whole = make_box("coreos-alpha", "1.0.0", padding=100_000)
    target = tmp_path / "thing.box"
    args: list[str | Path] = ["--name", "coreos-alpha", "--version", "1.0.0"]
    if case == "provider mismatch":
        target.write_bytes(whole)
        args += ["--provider", "libvirt"]
        expected = f"{target}: metadata.json says provider 'virtualbox', not 'libvirt' (--provider)"
    elif case == "no metadata.json":
        target.write_bytes(tar_gz({"box.ovf": b"<Envelope/>"}))
        expected = f"{target} has no readable metadata.json: pass --provider"
    else:
        target.write_bytes(whole[: len(whole) // 2] if case == "cut short" else whole[:-3])
        args += ["--provider", "virtualbox"]
        expected = f"cannot read box {target} (truncated or damaged?)"
    run = lab("mirror", "import", target, *args, "--root", mirror_root)
    assert run.returncode == ExitCode.USAGE, run.stderr
    assert expected in run.stderr
    assert files_under(mirror_root) == []


def test_a_box_without_metadata_json_is_filed_under_the_given_provider(mirror_root: Path, tmp_path: Path) -> None:
    target = tmp_path / "bare.box"
    target.write_bytes(tar_gz({"box.ovf": b"<Envelope/>"}))
    args = ["--name", "coreos-alpha", "--version", "1.0.0", "--provider", "libvirt", "--root", mirror_root, "--json"]
    run = lab("mirror", "import", target, *args)
    assert run.returncode == 0, run.stderr
    assert run.json()["box"]["provider"] == "libvirt"


def test_name_and_version_are_required_without_metadata(mirror_root: Path, box: tuple[Path, bytes]) -> None:
    path, _ = box
    run = lab("mirror", "import", path, "--version", "1.0.0", "--root", mirror_root)
    assert run.returncode == ExitCode.USAGE
    assert f"--name is required when importing {path} without --metadata" in run.stderr
    assert files_under(mirror_root) == []


def test_architecture_chooses_the_box_and_files_a_box_without_metadata(
    mirror_root: Path, box: tuple[Path, bytes], tmp_path: Path
) -> None:
    path, data = box
    # The amd64 entry's checksum is not this box's: only the arm64 entry describes it.
    doc = metadata_for(data, checksum="0" * 64)
    providers = doc["versions"][0]["providers"]
    providers.append(providers[0] | {"architecture": "arm64", "checksum": hashlib.sha256(data).hexdigest()})
    meta = write_json(tmp_path / "box.json", doc)
    ambiguous = lab("mirror", "import", path, "--metadata", meta, "--root", mirror_root)
    assert ambiguous.returncode == ExitCode.USAGE
    assert "2 boxes match" in ambiguous.stderr and "3815.2.0 virtualbox/arm64" in ambiguous.stderr
    assert "--architecture" in ambiguous.stderr
    chosen = lab(
        "mirror", "import", path, "--metadata", meta, "--architecture", "arm64", "--root", mirror_root, "--json"
    )
    assert chosen.returncode == 0, chosen.stderr
    assert chosen.json()["box"]["architecture"] == "arm64"
    store = MirrorStore(mirror_root)
    assert [e.key for e in store.entries()] == [BoxKey("flatcar-stable", "3815.2.0", "virtualbox", "arm64")]
    assert store.artifact_path(BoxKey("flatcar-stable", "3815.2.0", "virtualbox", "arm64")).read_bytes() == data
    # Without metadata the box's own metadata.json names no architecture: the option files it (default amd64).
    bare = ["--name", "coreos-alpha", "--version", "1.0.0", "--root", mirror_root, "--json"]
    run = lab("mirror", "import", path, *bare, "--architecture", "arm64")
    assert run.returncode == 0, run.stderr
    assert (run.json()["box"]["name"], run.json()["box"]["architecture"]) == ("coreos-alpha", "arm64")
