"""The one subprocess wrapper of the program: argument lists (never a shell), explicit cwd/env, debug
logging of the command and its return code, and `CommandFailed` with the tail of stderr."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from coreos_lab.errors import CommandFailed, Timeout, ToolMissing

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CommandResult:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def succeeded(self) -> bool:
        return self.returncode == 0


def which(tool: str, *, hint: str | None = None) -> str:
    """The path of `tool` on PATH, or `ToolMissing` naming it."""
    path = shutil.which(tool)
    if path is None:
        raise ToolMissing(f"{tool} not found on PATH", hint=hint)
    return path


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    cwd: Path | str | None = None,
    env: Mapping[str, str] | None = None,
    extra_env: Mapping[str, str] | None = None,
    check: bool = True,
    timeout: float | None = None,
    input: str | None = None,
) -> CommandResult:
    """Run a command to completion, capturing its output.

    `env` replaces the environment; `extra_env` is added to the current one (the usual need).
    """
    args = [os.fspath(a) for a in argv]
    full_env = dict(os.environ if env is None else env)
    if extra_env:
        full_env.update(extra_env)
    log.debug("run: %s (cwd=%s)", args, cwd)
    try:
        completed = subprocess.run(
            args,
            cwd=cwd,
            env=full_env,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise ToolMissing(f"{args[0]} not found") from exc
    except subprocess.TimeoutExpired as exc:
        raise Timeout(f"command timed out after {timeout:g}s: {' '.join(args)}") from exc
    log.debug("exit %s: %s", completed.returncode, args[0])
    result = CommandResult(args, completed.returncode, completed.stdout, completed.stderr)
    if check and completed.returncode != 0:
        raise CommandFailed(args, completed.returncode, completed.stderr)
    return result
