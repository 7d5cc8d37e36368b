"""Per-node state while a command works on several machines (`lab up`, `lab health --wait`)."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any


class NodeStates:
    """A live table on a terminal (stderr), else one stderr line whenever a node's state changes.

    Updates come from worker threads (one per machine or Vagrant process), hence the lock.
    """

    def __init__(
        self, nodes: Iterable[str], headers: tuple[str, ...], initial: tuple[Any, ...], *, live: bool, transient: bool
    ):
        """`initial`: every node's first cells; the first of them is also its state so far (see `update`)."""
        nodes = list(nodes)
        self.headers = headers
        self.rows: dict[str, tuple[Any, ...]] = dict.fromkeys(nodes, initial)
        self._changes: dict[str, object] = dict.fromkeys(nodes, initial[0])
        self._lock = threading.Lock()
        self._live: Any = None
        if live:
            from rich.live import Live

            from coreos_lab import console

            self._live = Live(self._table(), console=console.err(), transient=transient, refresh_per_second=4)

    @property
    def live(self) -> bool:
        return self._live is not None

    def update(self, node: str, cells: tuple[Any, ...], *, change: object, line: str) -> None:
        """Show `cells` (str or rich Text) for `node`; off a terminal, print `line` when `change` (what counts as
        a new state for the caller) differs from the node's last one."""
        from coreos_lab import console

        with self._lock:
            changed = self._changes.get(node) != change
            self._changes[node] = change
            self.rows[node] = cells
            if self._live is not None:
                self._live.update(self._table())
            elif changed:
                console.info(line)

    def _table(self) -> Any:
        from rich.table import Table
        from rich.text import Text

        table = Table(box=None, pad_edge=False)
        for header in self.headers:
            table.add_column(header)
        for node, cells in self.rows.items():
            table.add_row(Text(node), *(Text(c) if isinstance(c, str) else c for c in cells))
        return table

    def __enter__(self) -> NodeStates:
        if self._live is not None:
            self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.stop()
