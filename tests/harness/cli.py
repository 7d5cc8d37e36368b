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


def lab(
    *args: str | os.PathLike[str],
    cwd: Path | str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 300,
    input: str | None = None,
    prefix: Sequence[str] = (),
) -> LabRun:
    """`prefix` runs it through another command first, e.g. `ip netns exec NS`."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    proc = subprocess.run(
        [*prefix, sys.executable, "-m", "coreos_lab", *map(os.fspath, args)],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
    )
    return LabRun(proc.returncode, proc.stdout, proc.stderr)
