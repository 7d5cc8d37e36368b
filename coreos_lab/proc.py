"""The one subprocess wrapper of the program: argument lists (never a shell), explicit cwd/env, debug
logging of the command and its return code, and `CommandFailed` with the tail of stderr."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

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


def _environment(env: Mapping[str, str] | None, extra_env: Mapping[str, str] | None) -> dict[str, str]:
    """`env` (default: ours) with `extra_env` on top."""
    return {**(os.environ if env is None else env), **(extra_env or {})}


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
    full_env = _environment(env, extra_env)
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


STOP_GRACE = 120.0  # seconds a command stopped by `stream`'s `stop_when` has to clean up before it is killed

# Commands `stream` is running, so an interrupted caller can pass Ctrl-C on to them (see `interrupt_running`).
_running: set[subprocess.Popen[str]] = set()
_running_lock = threading.Lock()


def interrupt_running() -> None:
    """Send SIGINT to every command `stream` is running: the main thread got Ctrl-C, but commands started
    from worker threads (or in another process group) did not, and should clean up rather than be orphaned."""
    with _running_lock:
        for child in _running:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGINT)


def stream(
    argv: Sequence[str | os.PathLike[str]],
    on_line: Callable[[str], None],
    *,
    cwd: Path | str | None = None,
    extra_env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    stop_when: Callable[[], bool] | None = None,
) -> CommandResult:
    """Run a long command, handing each line of its merged stdout+stderr to `on_line` as it comes.

    For tools whose progress matters while they run (`vagrant up`); the result's `stdout` holds the whole
    merged output and `stderr` is empty. Never raises on a non-zero exit: the caller knows what it means.
    `stop_when`, asked after each line: once it says so, the command gets SIGINT (Vagrant then cleans up what it
    was creating) and its output is still read to the end; it is killed if it has not ended `STOP_GRACE` s later.
    """
    args = [os.fspath(a) for a in argv]
    full_env = _environment(None, extra_env)
    log.debug("stream: %s (cwd=%s)", args, cwd)
    lines: list[str] = []
    try:
        proc = subprocess.Popen(
            args,
            cwd=cwd,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
    except FileNotFoundError as exc:
        raise ToolMissing(f"{args[0]} not found") from exc
    assert proc.stdout is not None
    # A deadline kills the command; reading then ends at EOF and the timeout is reported.
    timed_out = threading.Event()

    def kill() -> None:
        timed_out.set()
        proc.kill()

    timer = threading.Timer(timeout, kill) if timeout else None
    stopping: threading.Timer | None = None
    if timer:
        timer.start()
    with _running_lock:
        _running.add(proc)
    try:
        with proc:
            for line in proc.stdout:
                line = line.rstrip("\n")
                lines.append(line)
                on_line(line)
                if stop_when is not None and stopping is None and stop_when():
                    stopping = threading.Timer(STOP_GRACE, proc.kill)
                    stopping.start()
                    with contextlib.suppress(ProcessLookupError):
                        proc.send_signal(signal.SIGINT)
    finally:
        with _running_lock:
            _running.discard(proc)
        if timer:
            timer.cancel()
        if stopping:
            stopping.cancel()
    if timed_out.is_set():
        raise Timeout(f"command timed out after {timeout:g}s: {' '.join(args)}")
    log.debug("exit %s: %s", proc.returncode, args[0])
    return CommandResult(args, proc.returncode, "\n".join(lines) + ("\n" if lines else ""), "")


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """CI systems cancel with SIGTERM: treat it like Ctrl-C so teardown still runs."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
