"""Hostile lab directories through the real CLI (`lab` as separate processes): a lab.yaml built to exhaust memory,
the stack or time is refused at once with exit 2 naming the file, and parallel writers of one lab take turns.

The `timeout` given to each run is a hang guard (the unfixed alias bomb ran until memory ran out), not a speed
assertion: a slow machine makes these tests slower, never red.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from harness.cli import LabRun, lab
from harness.labs import mirror_with_boxes

from coreos_lab.errors import ExitCode

HANG_GUARD = 120.0


@pytest.fixture
def mirror(mirror_root: Path) -> Path:
    mirror_with_boxes(mirror_root)
    return mirror_root


def _bomb(depth: int = 9, width: int = 9) -> list[str]:
    """Anchors `a0 … a<depth>`, each a list of `width` aliases of the one before: width**depth values expanded."""
    lines = [f"x0: &a0 [{', '.join(['lol'] * width)}]"]
    for level in range(1, depth + 1):
        lines.append(f"x{level}: &a{level} [{', '.join([f'*a{level - 1}'] * width)}]")
    return lines


def _lab_yaml(lab_dir: Path, mirror: Path, *lines: str) -> Path:
    lab_dir.mkdir()
    text = "\n".join([f"version: '1068.8.0'\nmirror: {{root: {json.dumps(str(mirror))}}}", *lines]) + "\n"
    (lab_dir / "lab.yaml").write_text(text)
    return lab_dir


def _assert_refused(run: LabRun, lab_dir: Path, *words: str) -> None:
    assert run.returncode == ExitCode.USAGE, run.stderr
    assert str(lab_dir / "lab.yaml") in run.stderr
    for word in words:
        assert word in run.stderr
    assert "unexpected" not in run.stderr


# Where the expanded bomb is used: the top level was refused before; every other place walked it.
BOMB_USES = {
    "fleet-metadata": ["fleet: {metadata: {k: *a9}}"],
    "machine-metadata": ["machines: {core-01: {metadata: {k: *a9}}}"],
    "unit-machines": ["units: [{name: a.service, machines: *a9}]"],
    "unit-drop-in-content": ["units: [{name: a.service, drop_ins: [{name: a.conf, content: *a9}]}]"],
    "forwarded-port": ["forwarded_ports: [{guest: *a9, host: 80}]"],
    "mapping-key": ["fleet: {metadata: {? *a9 : x}}"],
    "merge-key": ["machines: {core-01: {<<: *a9}}"],
    "unknown-section-key": ["mirror: {nope: *a9}"],
}


@pytest.mark.parametrize("command", ["config", "render"])
@pytest.mark.parametrize("use", sorted(BOMB_USES))
def test_alias_bomb_anywhere_is_refused_at_once(tmp_path: Path, mirror: Path, command: str, use: str) -> None:
    lab_dir = _lab_yaml(tmp_path / "lab", mirror, *_bomb(), *BOMB_USES[use])
    run = lab(command, lab_dir, timeout=HANG_GUARD)
    _assert_refused(run, lab_dir, "more than 100000 values once alias *a", "line ")
    assert not (lab_dir / ".lab").exists() and not (lab_dir / "Vagrantfile").exists()


@pytest.mark.parametrize(
    "lines, words",
    [
        (["fleet: {metadata: {k: " + "[" * 500 + "]" * 500 + "}}"], ["nested more than 32 levels"]),
        (["units:"] + [" " * (2 * i + 2) + "- " + "" for i in range(200)], ["nested more than 32 levels"]),
        (["x: &deep " + "[" * 24 + "1" + "]" * 24, "y: " + "[" * 12 + "*deep" + "]" * 12], ["through alias *deep"]),
        (["x: &self [a, *self]"], ["alias *self refers to a value that contains it"]),
        (["x: '" + "y" * (1 << 20) + "'"], ["larger than 1024 KiB"]),
        (["x: [" + "0, " * 100_001 + "]"], ["more than 100000 values"]),
    ],
    ids=["flow-nesting", "block-nesting", "alias-depth", "self-alias", "huge-file", "many-values"],
)
def test_resource_bombs_are_refused(tmp_path: Path, mirror: Path, lines: list[str], words: list[str]) -> None:
    lab_dir = _lab_yaml(tmp_path / "lab", mirror, *lines)
    _assert_refused(lab("config", lab_dir, timeout=HANG_GUARD), lab_dir, *words)


def test_thirty_thousand_unknown_keys_are_summarised(tmp_path: Path, mirror: Path) -> None:
    lab_dir = _lab_yaml(tmp_path / "lab", mirror, *(f"key{i}: 1" for i in range(30_000)))
    run = lab("config", lab_dir, timeout=HANG_GUARD)
    assert run.returncode == ExitCode.USAGE, run.stderr
    assert "invalid configuration (30000 problems)" in run.stderr
    assert "lab.yaml: key0: unknown key" in run.stderr and "… and 29950 more" in run.stderr
    assert "key29999" not in run.stderr


def test_aliases_within_bounds_still_work(tmp_path: Path, mirror: Path) -> None:
    lab_dir = _lab_yaml(
        tmp_path / "lab",
        mirror,
        "nodes: 2",
        "fleet: {metadata: &meta {region: lab}}",
        "machines: {core-02: {metadata: {<<: *meta, disk: ssd}}}",
    )
    run = lab("config", lab_dir, "--json", timeout=HANG_GUARD)
    assert run.returncode == 0, run.stderr
    assert [n["metadata"] for n in run.json()["nodes"]] == [
        {"role": "services", "region": "lab"},
        {"role": "services", "region": "lab", "disk": "ssd"},
    ]
