"""Box downloads in progress, and their live view on a terminal (`lab mirror serve` with stderr a tty)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID


@dataclass
class Transfer:
    """One box body being sent: `sent` counts bytes handed to the kernel so far."""

    client: str
    label: str
    total: int
    sent: int = 0
    started: float = field(default_factory=time.monotonic)
    _tracker: TransferTracker | None = field(default=None, repr=False)
    _task: TaskID | None = field(default=None, repr=False)

    def advance(self, count: int) -> None:
        self.sent += count
        if self._tracker is not None:
            self._tracker._advanced(self, count)

    def finish(self) -> None:
        if self._tracker is not None:
            self._tracker._finished(self)
            self._tracker = None


class TransferTracker:
    """Keeps the transfers in progress; with `live=True` draws them as progress bars on stderr.

    The bars are rich's `Progress` (its own refresh thread); everything written to stderr meanwhile, such as
    access-log lines, is printed above them.
    """

    def __init__(self, *, live: bool = False):
        self.live = live
        self.active: dict[int, Transfer] = {}
        self._progress: Progress | None = None

    def start(self) -> None:
        if not self.live or self._progress is not None:
            return
        from coreos_lab.progress import transfer_progress

        self._progress = transfer_progress(refresh_per_second=4)
        self._progress.start()

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def begin(self, client: str, label: str, total: int) -> Transfer:
        transfer = Transfer(client=client, label=label, total=total, _tracker=self)
        self.active[id(transfer)] = transfer
        if self._progress is not None:
            transfer._task = self._progress.add_task(f"{client} {label}", total=total)
        return transfer

    def _advanced(self, transfer: Transfer, count: int) -> None:
        if self._progress is not None and transfer._task is not None:
            self._progress.update(transfer._task, advance=count)

    def _finished(self, transfer: Transfer) -> None:
        self.active.pop(id(transfer), None)
        if self._progress is not None and transfer._task is not None:
            self._progress.remove_task(transfer._task)
