"""Drill logic that needs no machine: the faults' bookkeeping with the links stubbed out."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from harness.cli import lab

from coreos_lab import drill
from coreos_lab.cluster.health.targets import ClusterTargets
from coreos_lab.cluster.ssh import SSHTarget
from coreos_lab.errors import ExitCode, LabError


def test_an_interrupted_partition_heals_the_node_it_was_cutting_too_and_is_not_interrupted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    nodes = [SSHTarget(n, f"192.0.2.{i}") for i, n in enumerate(["core-01", "core-02", "core-03"], 1)]
    dc = drill.DrillCluster(ClusterTargets(nodes, "coreos", None, None))
    calls: list[tuple[str, bool, object]] = []

    def set_link(dc: drill.DrillCluster, node: str, up: bool) -> str:
        calls.append((node, up, signal.getsignal(signal.SIGINT)))
        if node == "core-02" and not up:  # Ctrl-C once the link is down, before the action is recorded
            raise KeyboardInterrupt
        return node

    monkeypatch.setattr(drill, "_check_filter_addresses", lambda dc: None)
    monkeypatch.setattr(drill, "_set_link", set_link)
    with pytest.raises(KeyboardInterrupt):
        drill.partition(dc, ["core-01", "core-02"])
    assert [(n, up) for n, up, _ in calls] == [
        ("core-01", False),
        ("core-02", False),
        ("core-01", True),
        ("core-02", True),
    ]
    assert all(handler is signal.SIG_IGN for _, up, handler in calls if up)  # a second Ctrl-C waits for the undo
    assert signal.getsignal(signal.SIGINT) is not signal.SIG_IGN


def test_a_report_that_cannot_be_written_after_the_drill_is_an_error_naming_junit(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    class Drill:
        members = ("core-01",)

        def __init__(self, dc: object, **kwargs: object) -> None:
            pass

        def plan(self) -> list[tuple[drill.Step, Callable[[], tuple[bool, str]]]]:
            return [(drill.Step("healthy", "healthy"), lambda: (True, "healthy"))]

        def undo(self) -> tuple[list[str], bool]:
            return [], True

    monkeypatch.setattr(drill, "QuorumDrill", Drill)
    taken = tmp_path / "report.xml"
    taken.mkdir()  # a directory where the file should go: the write fails after the drill
    with pytest.raises(LabError, match="--junit"):
        drill.run_quorum(drill.DrillCluster(ClusterTargets([], "coreos", None, None)), junit=taken)


@pytest.mark.parametrize("where", ["missing/report.xml", "file/report.xml"])
def test_a_junit_path_that_cannot_be_written_is_refused_before_the_drill(tmp_path: Path, where: str) -> None:
    (tmp_path / "file").write_text("")
    config = tmp_path / "ssh_config"
    config.write_text("Host core-01\n  HostName 192.0.2.1\n")
    run = lab(
        "drill", "quorum", "--ssh-config", config, "--junit", tmp_path / where, "--json", env={"HOME": str(tmp_path)}
    )
    assert run.returncode == ExitCode.USAGE, run.stderr
    assert "--junit" in run.json()["error"]["message"]
