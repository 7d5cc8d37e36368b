"""How long-running core work reports to the user: notes, and byte progress for transfers and hashing.

Core modules take a `Reporter` and default to `SilentReporter`; the CLI passes `TerminalReporter`, which
prints notes to stderr and draws a rich progress bar (rate, ETA) only when stderr is a terminal.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from rich.progress import Progress

Advance = Callable[[int], None]


class Reporter(Protocol):
    def note(self, message: str) -> None: ...

    def transfer(self, description: str, total: int | None, completed: int = 0) -> AbstractContextManager[Advance]:
        """A context yielding `advance(nbytes)`; `total` None when the size is unknown."""
        ...


class SilentReporter:
    def note(self, message: str) -> None:
        pass

    @contextmanager
    def transfer(self, description: str, total: int | None, completed: int = 0) -> Iterator[Advance]:
        yield lambda n: None


class TerminalReporter:
    """Notes on stderr always; progress bars only when stderr is a terminal."""

    def note(self, message: str) -> None:
        from coreos_lab import console

        console.info(message)

    @contextmanager
    def transfer(self, description: str, total: int | None, completed: int = 0) -> Iterator[Advance]:
        from coreos_lab import console

        if not console.stderr_is_terminal():
            yield lambda n: None
            return
        with transfer_progress(transient=True) as progress:
            task = progress.add_task(description, total=total, completed=completed)
            yield lambda n: progress.advance(task, n)


def transfer_progress(**options: Any) -> Progress:
    """A rich progress display on stderr with the columns every byte transfer shows: bar, bytes, rate, ETA."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    from coreos_lab import console

    columns = (
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    return Progress(*columns, console=console.err(), **options)
