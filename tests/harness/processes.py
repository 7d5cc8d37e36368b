"""Stopping the processes a test started: by PID, and always reaped."""

from __future__ import annotations

import os
import signal
import subprocess
from typing import Any


def stop(process: subprocess.Popen[Any] | None, timeout: float = 10.0) -> None:
    """SIGTERM by PID, then SIGKILL if it has not exited within `timeout`."""
    if process is None or process.poll() is not None:
        return
    os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill(process)


def kill(process: subprocess.Popen[Any] | None) -> None:
    """SIGKILL by PID and reap it: a crash, not a clean stop."""
    if process is not None and process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
