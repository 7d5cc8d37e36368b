"""Exit codes and the domain errors that carry them.

Every failure a user can cause or meet is a `LabError`; the CLI's single error boundary turns it into one
line on stderr (plus an optional hint) and its exit code. Nothing here prints or logs on construction.
"""

from __future__ import annotations

import errno
import os
from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    ERROR = 1  # I/O, network, an external command failed
    USAGE = 2  # bad input: options, files, fields, values
    UNHEALTHY = 3  # the cluster (or a check) is not healthy
    MISSING_TOOL = 4  # a required external tool or provider is missing / unusable
    TIMEOUT = 5  # a deadline passed
    INTERRUPTED = 130  # Ctrl-C


class LabError(Exception):
    """An error meant for the user: a message, an optional hint and an exit code."""

    exit_code: ExitCode = ExitCode.ERROR

    def __init__(self, message: str, *, hint: str | None = None, exit_code: ExitCode | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code


class BadInput(LabError):
    """Bad user input: name the file, the field and the value in the message."""

    exit_code = ExitCode.USAGE


class ToolMissing(LabError):
    exit_code = ExitCode.MISSING_TOOL


class Unhealthy(LabError):
    exit_code = ExitCode.UNHEALTHY


class Timeout(LabError):
    exit_code = ExitCode.TIMEOUT


class StageFailed(LabError):
    """A stage of a smoke run failed, its test case recorded: the run ends with this message and exit code."""


class CommandFailed(LabError):
    """An external command exited non-zero; carries the command, its return code and the tail of stderr."""

    def __init__(self, argv: list[str], returncode: int, stderr: str = "", *, hint: str | None = None):
        tail = "\n".join(stderr.strip().splitlines()[-15:])
        message = f"command failed (exit {returncode}): {' '.join(argv)}"
        if tail:
            message += "\n" + tail
        super().__init__(message, hint=hint)
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr


def io_error(exc: OSError, path: str | os.PathLike[str] | None, doing: str = "write") -> LabError:
    """An OSError (a full disk, a read-only filesystem, a name too long, …) as an error naming the file it
    concerns: the exception's own file when it has one, else `path`."""
    kind = BadInput if exc.errno == errno.ENAMETOOLONG else LabError  # a name too long is the value's fault
    target = exc.filename if exc.filename is not None else path
    where = (
        "" if target is None else f" {os.fsdecode(target) if isinstance(target, str | bytes | os.PathLike) else target}"
    )
    return kind(f"cannot {doing}{where}: {exc.strerror or exc}")
