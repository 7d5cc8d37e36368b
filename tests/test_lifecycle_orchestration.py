"""Orchestration of `lab up | halt | destroy | ssh` past preflight.

These need a working provider, which cannot run here (no VirtualBox): they use a stand-in `vagrant` and a
stand-in `VBoxManage` on PATH (tests/harness/standin_vagrant.py), which answer in Vagrant's machine-readable
format and keep machine state the way Vagrant does. Everything else is real: lab.yaml, rendering, the mirror
store, the embedded mirror + discovery server, the state file and the logs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from harness import processes
from harness.cli import lab, start_lab
from harness.lifecycle_labs import install_standins, make_lab
from harness.waiting import wait_until

from coreos_lab.errors import ExitCode

pytestmark = pytest.mark.integration

NODES = ["core-01", "core-02", "core-03"]


def calls(base: Path) -> list[dict]:
    path = base / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def verbs(base: Path) -> list[str]:
    return [" ".join(w for w in c["argv"] if not w.startswith("-"))[:20] for c in calls(base)]


def state_of(lab_dir: Path) -> dict:
    return json.loads((lab_dir / ".lab" / "state.json").read_text())


@pytest.fixture
def standin_lab(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    lab_dir, env = make_lab(tmp_path)
    env.update(install_standins(tmp_path, NODES))
    return lab_dir, env


def test_up_orders_steps_and_starts_machines_concurrently(tmp_path: Path, standin_lab: tuple[Path, dict]) -> None:
    lab_dir, env = standin_lab
    env["STANDIN_UP_SECONDS"] = "1.5"
    run = lab("up", lab_dir, "--no-wait", "--json", env=env)
    assert run.returncode == 0, run.stderr
    doc = run.json()
    assert doc["server"] == "embedded" and doc["started"] == NODES
    assert [n["state"] for n in doc["nodes"]] == ["running"] * 3
    order = [c["argv"][0] if c["argv"][0] != "box" else " ".join(c["argv"][:2]) for c in calls(tmp_path)]
    # version (preflight), box list, box add, the three ups: no `vagrant status`, as no machine has an id file
    # yet, and the final states come from the ups' success
    assert order[:3] == ["--version", "box list", "box add"]
    assert "status" not in order
    assert "ssh-config" not in order  # read early only for the health wait, which --no-wait skips
    ups = [c for c in calls(tmp_path) if c["argv"][0] == "up"]
    assert sorted(c["argv"][1] for c in ups) == NODES
    assert max(c["start"] for c in ups) < min(c["end"] for c in ups), "the three ups did not overlap"
    box_add = next(c for c in calls(tmp_path) if c["argv"][:2] == ["box", "add"])
    assert box_add["end"] <= min(c["start"] for c in ups)  # the box is added once, before any up
    assert "--box-version" in box_add["argv"] and "1.0.0" in box_add["argv"]
    state = state_of(lab_dir)
    assert state["cluster_created_at"] is not None and state["token"] is not None
    for name in NODES:
        assert "Machine booted and ready!" in (lab_dir / ".lab" / "logs" / f"up-{name}.log").read_text()


def test_up_again_keeps_running_machines_and_token(tmp_path: Path, standin_lab: tuple[Path, dict]) -> None:
    lab_dir, env = standin_lab
    assert lab("up", lab_dir, "--no-wait", env=env).returncode == 0
    token = state_of(lab_dir)["token"]["token"]
    before_second = len(calls(tmp_path))
    run = lab("up", lab_dir, "--no-wait", "--json", env=env)
    assert run.returncode == 0, run.stderr
    assert run.json()["started"] == [] and run.json()["already_running"] == NODES
    # machines exist now: their states come from `vagrant status`
    assert [c["argv"][0] for c in calls(tmp_path)[before_second:]].count("status") == 1
    assert state_of(lab_dir)["token"]["token"] == token


def test_one_machine_failing_is_named_with_its_log_and_others_come_up(
    tmp_path: Path, standin_lab: tuple[Path, dict]
) -> None:
    lab_dir, env = standin_lab
    env["STANDIN_FAIL"] = "core-02"
    run = lab("up", lab_dir, "--no-wait", env=env)
    assert run.returncode == ExitCode.ERROR, run.stderr
    assert "vagrant up failed for core-02 (1 of 3 machines)" in run.stderr
    assert "VMBootTimeout" in run.stderr and "Timed out while waiting for the machine to boot" in run.stderr
    log = lab_dir / ".lab" / "logs" / "up-core-02.log"
    assert str(log) in run.stderr
    assert "Waiting for machine to boot" in log.read_text()
    status = lab("status", lab_dir, "--json", env=env).json()
    assert {n["name"]: n["state"] for n in status["nodes"]} == {
        "core-01": "running",
        "core-02": "not_created",
        "core-03": "running",
    }
    # The cluster exists (two machines run), so its token is spent and kept for it.
    assert state_of(lab_dir)["cluster_created_at"] is not None


def test_destroy_after_failure_removes_everything_and_retires_the_token(
    tmp_path: Path, standin_lab: tuple[Path, dict]
) -> None:
    lab_dir, env = standin_lab
    env["STANDIN_FAIL"] = "core-03"
    assert lab("up", lab_dir, "--no-wait", env=env).returncode == ExitCode.ERROR
    token = state_of(lab_dir)["token"]["token"]
    run = lab("destroy", lab_dir, "--force", "--json", env=env)
    assert run.returncode == 0, run.stderr
    assert run.json()["destroyed"] == ["core-01", "core-02"]
    state = state_of(lab_dir)
    assert token in state["used_tokens"] and state["token"] is None and state["cluster_created_at"] is None
    assert not list((lab_dir / ".vagrant" / "machines").rglob("id"))
    # A new cluster gets a new token: the old one is never rendered again.
    del env["STANDIN_FAIL"]
    assert lab("up", lab_dir, "--no-wait", env=env).returncode == 0
    assert state_of(lab_dir)["token"]["token"] != token


def test_halt_one_machine(tmp_path: Path, standin_lab: tuple[Path, dict]) -> None:
    lab_dir, env = standin_lab
    assert lab("up", lab_dir, "--no-wait", env=env).returncode == 0
    run = lab("halt", lab_dir, "core-02", "--json", env=env)
    assert run.returncode == 0, run.stderr
    assert [n["state"] for n in run.json()["nodes"]] == ["running", "poweroff", "running"]
    unknown = lab("halt", lab_dir, "core-09", env=env)
    assert unknown.returncode == ExitCode.USAGE and "core-09" in unknown.stderr


def test_ssh_passes_the_command_exit_code_through(tmp_path: Path, standin_lab: tuple[Path, dict]) -> None:
    lab_dir, env = standin_lab
    run = lab("ssh", lab_dir, "core-01", "--", "sh", "-c", "echo hi from $0; exit 7", env=env)
    assert run.returncode == 7
    assert "hi from sh" in run.stdout
    ssh_call = calls(tmp_path)[-1]["argv"]
    assert ssh_call[:2] == ["ssh", "core-01"] and ssh_call[2] == "-c"


def test_up_with_box_missing_from_mirror_names_it(tmp_path: Path) -> None:
    lab_dir, env = make_lab(tmp_path, with_box=False)
    env.update(install_standins(tmp_path, NODES))
    run = lab("up", lab_dir, env=env)
    assert run.returncode == ExitCode.MISSING_TOOL, run.stderr
    assert "coreos-stable 1.0.0 (virtualbox) is not in the mirror" in run.stderr
    assert not (lab_dir / ".lab").exists()
    # Only questions were asked: Vagrant's version and whether it already has the box.
    assert [c["argv"][:2] for c in calls(tmp_path)] == [["--version"], ["box", "list"]]


def test_up_with_the_box_only_in_vagrant_needs_no_mirror_copy(tmp_path: Path) -> None:
    lab_dir, env = make_lab(tmp_path, with_box=False)
    env.update(install_standins(tmp_path, NODES))
    (tmp_path / "vagrant.d").mkdir()
    (tmp_path / "vagrant.d" / "standin-boxes.json").write_text(
        json.dumps([{"name": "coreos-stable", "provider": "virtualbox", "version": "1.0.0"}])
    )
    run = lab("up", lab_dir, "--no-wait", "--json", env=env)
    assert run.returncode == 0, run.stderr
    assert run.json()["started"] == NODES
    assert not any(c["argv"][:2] == ["box", "add"] for c in calls(tmp_path))


def test_interrupted_up_stops_its_vagrant_processes_and_exits_130(
    tmp_path: Path, standin_lab: tuple[Path, dict]
) -> None:
    import signal

    lab_dir, env = standin_lab
    env["STANDIN_UP_SECONDS"] = "600"  # far longer than the test waits: only the interrupt can end these ups
    process = start_lab("up", lab_dir, "--no-wait", env=env)
    try:
        logs = [lab_dir / ".lab" / "logs" / f"up-{name}.log" for name in NODES]

        def every_up_booting() -> bool:
            assert process.poll() is None, process.communicate()
            return all(log.exists() and "Bringing machine" in log.read_text() for log in logs)

        wait_until(every_up_booting, "every machine's vagrant up booting")
        process.send_signal(signal.SIGINT)  # to lab only, not its process group: lab must pass it on
        _, stderr = process.communicate(timeout=120)
    finally:
        processes.kill(process)
    assert process.returncode == ExitCode.INTERRUPTED, stderr
    for log in logs:
        text = log.read_text()
        assert "== exit" in text and "== exit 0" not in text, text  # every vagrant up was stopped, none finished
