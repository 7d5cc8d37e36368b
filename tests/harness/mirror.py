"""`lab mirror serve` as a real subprocess on a free port, its stderr (announce + access log) collected."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from harness import processes

LISTEN_RE = re.compile(r" on (http://[^\s/]+?):? ")


class MirrorProcess:
    def __init__(self, proc: subprocess.Popen[str]):
        self.proc = proc
        self.lines: list[str] = []
        self.url = ""
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            found = LISTEN_RE.search(line)
            if found and not self.url:
                self.url = found.group(1)
                self._ready.set()
        self._ready.set()

    def wait_ready(self, timeout: float = 30) -> None:
        if not self._ready.wait(timeout) or not self.url:
            raise RuntimeError("mirror server did not start:\n" + "\n".join(self.lines))

    def access_lines(self, path: str) -> list[str]:
        """Access-log lines for requests to `path`; waits briefly since a line follows the response."""
        deadline = time.monotonic() + 60  # about a hang, not speed
        while True:
            found = [line for line in self.lines if f" {path} HTTP/" in line]
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def stop(self) -> int:
        processes.stop(self.proc, timeout=15)
        self._reader.join(timeout=5)
        return self.proc.returncode


@contextmanager
def mirror_server(root: Path, *args: str) -> Iterator[MirrorProcess]:
    """`python -m coreos_lab mirror serve --root ROOT --port 0 ARGS…`, stopped by PID afterwards."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "coreos_lab", "mirror", "serve", "--root", str(root), "--port", "0", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    server = MirrorProcess(proc)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
