"""The stderr messages: the user's text exactly as given, on a terminal (through rich) and off one (plain)."""

from __future__ import annotations

import io
import sys

import pytest
from rich.console import Console

from coreos_lab import console

TRICKY = "box [bold]x[/bold] at /tmp/:smile:/[red] done"


def test_off_a_terminal_messages_are_plain_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    buffer = io.StringIO()
    monkeypatch.setattr(sys, "stderr", buffer)
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    console.info(TRICKY)
    console.warn(TRICKY)
    console.error(TRICKY, hint="try [this]")
    assert buffer.getvalue().splitlines() == [TRICKY, f"warning: {TRICKY}", f"error: {TRICKY}", "hint: try [this]"]


def test_on_a_terminal_rich_prints_the_text_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    buffer = io.StringIO()
    terminal = Console(file=buffer, force_terminal=True, width=200, highlight=False, soft_wrap=True, emoji=False)
    monkeypatch.setattr(console, "err", lambda: terminal)
    monkeypatch.setattr(console, "stderr_is_terminal", lambda: True)
    console.success(TRICKY)
    printed = buffer.getvalue()
    assert "\x1b[" in printed  # styled
    plain = printed.replace("\x1b[32m", "").replace("\x1b[0m", "")
    assert plain == TRICKY + "\n"


def test_the_consoles_leave_emoji_codes_alone() -> None:
    for made in (console.out(), console.err()):
        assert made.render_str(TRICKY, markup=False).plain == TRICKY
