"""`lab` on a pseudo-terminal, as a person at a terminal would run it: what it draws, and answers typed to it."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from harness import processes


class Terminal:
    """The terminal side of a running `lab`: everything it wrote so far (`screen`), and the keyboard."""

    def __init__(self, proc: subprocess.Popen[bytes], master: int):
        self.proc = proc
        self._master = master
        self.screen = b""

    def read_until(self, marker: bytes | None, timeout: float = 60) -> None:
        """Until `marker` shows, or (None) until the terminal closes: every writer has exited."""
        deadline = time.monotonic() + timeout
        while (marker is None or marker not in self.screen) and time.monotonic() < deadline:
            if select.select([self._master], [], [], 0.2)[0]:
                try:
                    chunk = os.read(self._master, 65536)
                except OSError:  # EIO: every writer is gone
                    chunk = b""
                if not chunk:
                    break
                self.screen += chunk
        assert marker is None or marker in self.screen, self.screen.decode(errors="replace")

    def type(self, line: bytes) -> None:
        os.write(self._master, line + b"\n")

    @property
    def text(self) -> str:
        return self.screen.decode(errors="replace")


@contextmanager
def on_a_terminal(
    argv: Sequence[str], env: dict[str, str], *, stdin: bool = False, stop_timeout: float = 15
) -> Iterator[Terminal]:
    """`lab ARGV` with stderr (and with `stdin`, stdin too) on a pseudo-terminal; stdout goes nowhere. Leaving
    the block stops it by PID (SIGTERM, then SIGKILL) and closes the terminal."""
    master, slave = os.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "coreos_lab", *argv],
        stdin=slave if stdin else subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=slave,
        env={**os.environ, **env},
    )
    os.close(slave)
    try:
        yield Terminal(proc, master)
    finally:
        try:
            processes.stop(proc, timeout=stop_timeout)
        finally:
            os.close(master)
