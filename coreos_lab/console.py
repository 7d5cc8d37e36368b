"""The two consoles: data on stdout, human messages on stderr.

rich is imported lazily so `lab --help` stays fast, and messages to a stderr that is not a terminal (scripts, CI,
pipes) are written without it: rich would add nothing there but ~40 ms of import. User- or tool-supplied text is
always printed with markup and emoji codes off, so `[brackets]` or `:name:` in paths or stderr are never rewritten.
"""

from __future__ import annotations

import json
import os
import sys
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console


@cache
def out() -> Console:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True, emoji=False)


@cache
def err() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)


def stderr_is_terminal() -> bool:
    return sys.stderr.isatty()


def _message(line: str, style: str | None = None) -> None:
    """One line on stderr: styled by rich where colours show (a terminal, or FORCE_COLOR as rich reads it)."""
    if stderr_is_terminal() or os.environ.get("FORCE_COLOR"):
        err().print(line, style=style, markup=False)
    else:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


def info(message: str) -> None:
    _message(message)


def success(message: str) -> None:
    _message(message, "green")


def warn(message: str) -> None:
    _message(f"warning: {message}", "yellow")


def error(message: str, hint: str | None = None) -> None:
    _message(f"error: {message}", "bold red")
    if hint:
        _message(f"hint: {hint}", "cyan")


_json_printed = False


def print_json(document: Any) -> None:
    """Exactly one JSON document on stdout."""
    global _json_printed
    sys.stdout.write(json.dumps(document, indent=2, sort_keys=False, default=str) + "\n")
    sys.stdout.flush()
    _json_printed = True


def reset_json_printed() -> None:
    """A new run has printed nothing yet (main() may run more than once in a process)."""
    global _json_printed
    _json_printed = False


def json_printed() -> bool:
    """Whether this run has printed its JSON document (the error boundary prints one only if not)."""
    return _json_printed
