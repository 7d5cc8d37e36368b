"""`lab status | up | destroy` with the real Vagrant CLI and no VirtualBox: `lab` runs with a PATH without
VBoxManage, so these hold on a machine that has VirtualBox too."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from harness.cli import lab
from harness.lifecycle_labs import make_lab
from harness.terminal import on_a_terminal
from harness.tool_path import VIRTUALBOX_TOOLS, path_without

from coreos_lab.discovery.store import DiscoveryStore
from coreos_lab.errors import ExitCode
from coreos_lab.paths import discovery_dir

pytestmark = [pytest.mark.integration, pytest.mark.vagrant]

NODES = ["core-01", "core-02", "core-03"]


def lab_without_virtualbox(base: Path) -> tuple[Path, dict[str, str]]:
    lab_dir, env = make_lab(base)
    env["PATH"] = path_without(base / "bin", *VIRTUALBOX_TOOLS)
    return lab_dir, env


def state_of(lab_dir: Path) -> dict:
    path = lab_dir / ".lab" / "state.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def discovery_tokens(mirror_root: Path) -> list[str]:
    """The tokens in the mirror's discovery store (one sqlite file, so ask it, not the file system)."""
    state_dir = discovery_dir(mirror_root)
    if not state_dir.exists():
        return []
    store = DiscoveryStore(state_dir)
    try:
        return [t.token for t in store.tokens()]
    finally:
        store.close()


def test_status_of_a_rendered_lab_lists_every_node_not_created(tmp_path: Path) -> None:
    lab_dir, env = lab_without_virtualbox(tmp_path)
    rendered = lab("render", lab_dir, env=env)
    assert rendered.returncode == 0, rendered.stderr
    run = lab("status", lab_dir, "--json", env=env)
    assert run.returncode == 0, run.stderr
    doc = run.json()
    assert [n["name"] for n in doc["nodes"]] == NODES
    assert {n["state"] for n in doc["nodes"]} == {"not_created"}
    # Vagrant could not ask VirtualBox; the states come from Vagrant's own records, and the note says why.
    assert doc["source"] == "disk"
    assert "VirtualBox" in doc["note"]
    human = lab("status", lab_dir, env=env)
    assert human.returncode == 0
    assert all(name in human.stderr for name in NODES) and "not created" in human.stderr


def test_up_without_virtualbox_exits_4_creates_nothing_consumes_no_token(tmp_path: Path) -> None:
    lab_dir, env = lab_without_virtualbox(tmp_path)
    before = sorted(p.name for p in lab_dir.iterdir())
    run = lab("up", lab_dir, env=env)
    assert run.returncode == ExitCode.MISSING_TOOL, run.stderr
    first = run.stderr.strip().splitlines()[0]
    assert first.startswith("error: VirtualBox not found"), run.stderr
    assert "hint:" in run.stderr
    assert sorted(p.name for p in lab_dir.iterdir()) == before  # nothing rendered, no .vagrant, no .lab
    assert discovery_tokens(tmp_path / "boxes") == []


def test_up_on_a_rendered_lab_keeps_its_token_unspent(tmp_path: Path) -> None:
    lab_dir, env = lab_without_virtualbox(tmp_path)
    assert lab("render", lab_dir, env=env).returncode == 0
    token = state_of(lab_dir)["token"]["token"]
    rendered = sorted(lab_dir.rglob("*"))
    run = lab("up", lab_dir, "--no-wait", env=env)
    assert run.returncode == ExitCode.MISSING_TOOL
    state = state_of(lab_dir)
    assert state["token"]["token"] == token
    assert state["cluster_created_at"] is None and token not in state["used_tokens"]
    assert discovery_tokens(tmp_path / "boxes") == [token]  # no second token minted
    # Preflight stopped it before any Vagrant command in the lab: no .vagrant, no .lab/logs. (Without
    # VirtualBox, Vagrant creates no .vagrant/machines even when asked, so that path alone would prove nothing.)
    assert sorted(lab_dir.rglob("*")) == rendered


def test_destroy_of_a_never_created_lab_retires_the_token(tmp_path: Path) -> None:
    lab_dir, env = lab_without_virtualbox(tmp_path)
    assert lab("render", lab_dir, env=env).returncode == 0
    token = state_of(lab_dir)["token"]["token"]
    refused = lab("destroy", lab_dir, env=env)
    assert refused.returncode == ExitCode.USAGE
    assert "not a terminal" in refused.stderr and "--force" in refused.stderr
    assert state_of(lab_dir)["token"]["token"] == token
    run = lab("destroy", lab_dir, "--force", "--json", env=env)
    assert run.returncode == 0, run.stderr
    assert run.json() == {"lab_dir": str(lab_dir.resolve()), "destroyed": [], "token_retired": True}
    assert token in state_of(lab_dir)["used_tokens"]


def answer_on_a_terminal(argv: list[str], env: dict[str, str], prompt: bytes, answer: bytes) -> tuple[int, str]:
    """`lab ARGV` with stdin and stderr on a pseudo-terminal: waits for `prompt`, types `answer` and Enter.
    Returns the exit code and everything written to the terminal."""
    with on_a_terminal(argv, env, stdin=True) as terminal:
        terminal.read_until(prompt)
        terminal.type(answer)
        terminal.read_until(None, timeout=120)
        returncode = terminal.proc.wait(timeout=30)
    return returncode, terminal.text


def test_destroy_asks_on_a_terminal_and_does_what_the_answer_says(tmp_path: Path) -> None:
    lab_dir, env = lab_without_virtualbox(tmp_path)
    assert lab("render", lab_dir, env=env).returncode == 0
    token = state_of(lab_dir)["token"]["token"]
    prompt = f"Destroy the 3 machine(s) of {lab_dir.resolve()}? [y/N]".encode()
    returncode, screen = answer_on_a_terminal(["destroy", str(lab_dir)], env, prompt, b"n")
    assert returncode == ExitCode.ERROR, screen
    assert "nothing destroyed" in screen
    assert state_of(lab_dir)["token"]["token"] == token and token not in state_of(lab_dir)["used_tokens"]
    returncode, screen = answer_on_a_terminal(["destroy", str(lab_dir)], env, prompt, b"y")
    assert returncode == 0, screen
    assert "destroyed: no machine existed; discovery token retired" in screen
    assert token in state_of(lab_dir)["used_tokens"]
