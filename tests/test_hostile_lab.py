"""Hostile lab directories through the real CLI (`lab` as separate processes): a lab.yaml built to exhaust memory,
the stack or time is refused at once with exit 2 naming the file, and parallel writers of one lab take turns.

The `timeout` given to each run is a hang guard (the unfixed alias bomb ran until memory ran out), not a speed
assertion: a slow machine makes these tests slower, never red.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from harness.cli import LabRun, lab, start_lab
from harness.labs import mirror_with_boxes, write_lab
from harness.processes import kill, stop

from coreos_lab.errors import ExitCode, Timeout
from coreos_lab.lab import lock
from coreos_lab.lab.config import load_config
from coreos_lab.lab.render import render_lab

pytestmark = pytest.mark.integration

HANG_GUARD = 120.0


@pytest.fixture
def mirror(mirror_root: Path) -> Path:
    mirror_with_boxes(mirror_root)
    return mirror_root


def _bomb(depth: int = 9, width: int = 9) -> list[str]:
    """Anchors `a0 … a<depth>`, each a list of `width` aliases of the one before: width**(depth + 1) values expanded."""
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


# -- one writer at a time -------------------------------------------------------------------------------------


def _tokens_in(text: str) -> set[str]:
    return set(re.findall(r"http://10\.0\.2\.2:8080/([0-9a-f]+)", text))


@pytest.mark.parametrize("trial", range(6))
def test_parallel_renders_agree_on_the_token(tmp_path: Path, mirror: Path, trial: int) -> None:
    lab_dir = write_lab(tmp_path / "lab", mirror)
    renders = [start_lab("render", lab_dir) for _ in range(8)]
    try:
        outcomes = [(process.wait(timeout=HANG_GUARD), process.communicate()[1]) for process in renders]
    finally:
        for process in renders:
            stop(process)
    assert [code for code, _ in outcomes] == [0] * 8, outcomes
    state = json.loads((lab_dir / ".lab" / "state.json").read_text())
    for node in ("core-01", "core-02", "core-03"):
        assert _tokens_in((lab_dir / "user-data" / f"{node}.yaml").read_text()) == {state["token"]["token"]}
    assert len(state["used_tokens"]) == 0  # the first render minted it; the seven after it kept it
    assert lab("render", lab_dir, timeout=HANG_GUARD).returncode == 0  # nothing counts as "edited since"


def _hold(lab_dir: Path) -> subprocess.Popen[str]:
    """Another process holding the lab until its stdin closes; returns once it holds it. Its command line ends
    like `python -m coreos_lab up DIR`'s, which is how waiters name a holder."""
    script = (
        "import sys; from pathlib import Path; from coreos_lab.lab.lock import locked_lab\n"
        "with locked_lab(Path(sys.argv[-1]), 'lab up'):\n"
        "    print('held', flush=True); sys.stdin.read()\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", script, "coreos_lab", "up", str(lab_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    return holder


def test_a_second_writer_waits_for_the_holder_and_names_it(tmp_path: Path, mirror: Path) -> None:
    lab_dir = write_lab(tmp_path / "lab", mirror)
    holder = _hold(lab_dir)
    render = None
    try:
        render = start_lab("render", lab_dir)
        assert render.stderr is not None
        waiting = render.stderr.readline()
        assert waiting == f"waiting for pid {holder.pid} (lab up {lab_dir}) to finish with {lab_dir} (up to 60 s)\n"
        assert not (lab_dir / "Vagrantfile").exists()
        holder.communicate(input="", timeout=HANG_GUARD)  # lets go
        assert render.wait(timeout=HANG_GUARD) == 0, render.communicate()[1]
        assert (lab_dir / "Vagrantfile").is_file()
    finally:
        stop(render)
        kill(holder)


def test_the_lock_of_a_killed_process_blocks_nobody(tmp_path: Path, mirror: Path) -> None:
    lab_dir = write_lab(tmp_path / "lab", mirror)
    kill(_hold(lab_dir))  # SIGKILL: no cleanup of its own ran
    run = lab("render", lab_dir, timeout=HANG_GUARD)
    assert run.returncode == 0, run.stderr
    assert "waiting" not in run.stderr


def test_a_writer_gives_up_naming_the_holder(tmp_path: Path, mirror: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In process, with the wait shortened: the CLI would wait a minute."""
    lab_dir = write_lab(tmp_path / "lab", mirror)
    holder = _hold(lab_dir)
    try:
        monkeypatch.setattr(lock, "WAIT", 0.1)
        with pytest.raises(Timeout) as refused, lock.locked_lab(lab_dir, "lab render"):
            pytest.fail("the lock was taken while another process held it")
        assert (
            refused.value.message == f"{lab_dir} is busy: pid {holder.pid} (lab up {lab_dir}) still holds it after 0 s"
        )
        assert refused.value.exit_code == ExitCode.TIMEOUT
    finally:
        kill(holder)


def test_the_lock_is_reentrant_within_a_process(tmp_path: Path, mirror: Path) -> None:
    """`lab up` renders and `lab smoke` runs up and destroy while holding the lab."""
    config = load_config(write_lab(tmp_path / "lab", mirror), environ={})
    with lock.locked_lab(config.lab_dir, "lab up"):
        assert render_lab(config).token == "new"
    assert sorted(p.name for p in (config.lab_dir / ".lab").iterdir()) == ["state.json"]  # the lock wrote nothing


@pytest.mark.parametrize("line", ['name_prefix: "core\\n"', 'fleet: {metadata: {"region\\n": a}}'])
def test_a_value_ending_in_a_newline_is_refused(tmp_path: Path, mirror: Path, line: str) -> None:
    """The patterns match the whole value: `$` alone also matches before a final newline."""
    lab_dir = _lab_yaml(tmp_path / "lab", mirror, line)
    _assert_refused(lab("config", lab_dir), lab_dir)
