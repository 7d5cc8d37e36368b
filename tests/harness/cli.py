"""Run the `lab` CLI as a user would: a separate process, real exit code, stdout and stderr apart."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class LabRun:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


def _argv(args: Sequence[str | os.PathLike[str]], prefix: Sequence[str]) -> list[str]:
    return [*prefix, sys.executable, "-m", "coreos_lab", *(os.fspath(a) for a in args)]


def lab(
    *args: str | os.PathLike[str],
    cwd: Path | str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 300,
    input: str | None = None,
    prefix: Sequence[str] = (),
) -> LabRun:
    """`prefix` runs it through another command first, e.g. `ip netns exec NS`."""
    proc = subprocess.run(
        _argv(args, prefix),
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
    )
    return LabRun(proc.returncode, proc.stdout, proc.stderr)


def start_lab(*args: str | os.PathLike[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """`lab` in the background, for tests that act while it runs (stdout and stderr piped, no stdin); stop it
    with `harness.processes.kill` in a `finally`."""
    return subprocess.Popen(
        _argv(args, ()),
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
