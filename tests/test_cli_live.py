"""The per-node state display shared by `lab up` and `lab health --wait`."""

from __future__ import annotations

import io
import threading

import pytest
from rich.console import Console

from coreos_lab import console
from coreos_lab.cli.live import NodeStates


@pytest.fixture
def stderr(monkeypatch: pytest.MonkeyPatch) -> tuple[io.StringIO, Console]:
    buffer = io.StringIO()
    fake = Console(file=buffer, force_terminal=True, width=100, color_system=None)
    monkeypatch.setattr(console, "err", lambda: fake)
    monkeypatch.setattr(console, "stderr_is_terminal", lambda: True)  # as the fake says: messages go through it
    return buffer, fake


def test_off_a_terminal_a_line_per_change_of_state(stderr: tuple[io.StringIO, Console]) -> None:
    buffer, _ = stderr
    states = NodeStates(["a", "b"], ("node", "phase", "detail"), ("waiting", ""), live=False, transient=False)
    with states:
        states.update("a", ("waiting", "preflight"), change="waiting", line="a: waiting")  # no change yet
        states.update("a", ("creating", "1"), change="creating", line="a: creating")
        states.update("a", ("creating", "2"), change="creating", line="a: creating again")
        states.update("b", ("healthy", ""), change="healthy", line="b: healthy")
    assert buffer.getvalue().splitlines() == ["a: creating", "b: healthy"]
    assert states.rows == {"a": ("creating", "2"), "b": ("healthy", "")}


def test_on_a_terminal_a_live_table_of_every_node(stderr: tuple[io.StringIO, Console]) -> None:
    buffer, _ = stderr
    states = NodeStates(["core-01", "core-02"], ("machine", "phase"), ("waiting",), live=True, transient=False)
    with states:
        workers = [
            threading.Thread(
                target=states.update, args=(n, ("running",)), kwargs={"change": "r", "line": f"{n} plain line"}
            )
            for n in ("core-01", "core-02")
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    final = buffer.getvalue().split("machine")[-1]  # the last frame the live display drew
    assert "core-01  running" in final and "core-02  running" in final
    assert "plain line" not in buffer.getvalue()  # no plain lines beside the table
