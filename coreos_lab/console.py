"""The two consoles: data on stdout, human messages on stderr.

rich is imported lazily so `lab --help` stays fast. User- or tool-supplied text is always printed with
markup off, so `[brackets]` in paths or stderr are never taken as markup.
"""

from __future__ import annotations

import json
import sys
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console


@cache
def out() -> Console:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


@cache
def err() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def stderr_is_terminal() -> bool:
    return sys.stderr.isatty()


def info(message: str) -> None:
    err().print(message, markup=False)


def success(message: str) -> None:
    err().print(message, style="green", markup=False)


def warn(message: str) -> None:
    err().print(f"warning: {message}", style="yellow", markup=False)


def error(message: str, hint: str | None = None) -> None:
    err().print(f"error: {message}", style="bold red", markup=False)
    if hint:
        err().print(f"hint: {hint}", style="cyan", markup=False)


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
