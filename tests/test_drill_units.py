"""Drill logic that needs no machine: the faults' bookkeeping with the links stubbed out."""

from __future__ import annotations

import signal

import pytest

from coreos_lab import drill
from coreos_lab.cluster.health.targets import ClusterTargets
from coreos_lab.cluster.ssh import SSHTarget


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
