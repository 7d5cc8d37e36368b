"""Atomic file writes (a reader sees the old file or the new one, never half) and locked `.part` files."""

from __future__ import annotations

import errno
import fcntl
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from coreos_lab.errors import io_error


def atomic_write_bytes(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    tmp = write_temp(path, data, mode=mode)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_temp(path: Path, data: bytes, *, mode: int = 0o644) -> Path:
    """`data` in a new hidden file beside `path`, on disk and with `mode`, for the caller to rename into place
    (`os.replace`): a full disk shows here, before anything at `path` changed. Nothing is left on failure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


@contextmanager
def naming_io_errors(path: Path | None = None, doing: str = "write") -> Iterator[None]:
    """Turns an OSError into a `LabError` naming its file (the error's own, else `path`); one that names no
    file and is given none passes unchanged."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None and path is None:
            raise
        raise io_error(exc, path, doing) from exc


def atomic_write_text(path: Path, text: str, *, mode: int = 0o644) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), mode=mode)


@contextmanager
def locked_part(part: Path, on_wait: Callable[[], None] | None = None) -> Iterator[BinaryIO]:
    """`part` (a file being downloaded or copied), open for reading and writing under an exclusive lock.

    Two writers of the same file take turns instead of clobbering each other's part: the second waits (after
    calling `on_wait`), then finds the file committed or the part ready to resume. The lock lives on the part's
    inode, so after the first writer renamed it into place a waiter notices the path now names another file and
    opens a fresh part. On exit an empty part is removed, with the (up to two) directories that only it had
    created: a refused write leaves no trace. What a cut writer got so far stays, for the next one to resume.
    """
    while True:
        part.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # a concurrent cleanup removed the directory after our mkdir
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
        if _same_file(part, fd):
            break
        os.close(fd)
    handle = open(part, "r+b", opener=lambda _path, _flags: fd)  # noqa: SIM115 (closed below); name = the path
    try:
        yield handle
    finally:
        try:
            handle.flush()
            if _same_file(part, fd) and os.fstat(fd).st_size == 0:
                part.unlink()
                for directory in (part.parent, part.parent.parent):
                    try:
                        directory.rmdir()
                    except OSError:
                        break  # not empty: it holds other files
        finally:
            handle.close()


def _same_file(path: Path, fd: int) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


class LockHeld(Exception):
    """`held_lock` gave up waiting: `holder` (e.g. "pid 1234 (lab up mylab)") still holds it."""

    def __init__(self, path: Path, holder: str):
        super().__init__(f"{path} is held by {holder}")
        self.path = path
        self.holder = holder


@contextmanager
def held_lock(path: Path, *, wait: float, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on `path`, an existing file or directory, while the block runs.

    A second process waits up to `wait` seconds (`on_wait(holder)` called once, as it starts waiting), then
    `LockHeld` naming the holder. The lock is flock(2)'s: nothing is written (a refused command leaves no trace),
    and the kernel drops it when its holder ends in any way, so a crashed process never leaves a stale lock.
    Where the filesystem cannot lock (NFS emulates flock with byte-range locks, which a read-only descriptor
    cannot take) the block runs unlocked, as it did before there was a lock.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        deadline = None
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if deadline is None:
                    deadline = time.monotonic() + wait
                    if on_wait is not None:
                        on_wait(lock_holder(path))
                if time.monotonic() >= deadline:
                    raise LockHeld(path, lock_holder(path)) from None
                time.sleep(0.05)  # flock has no timeout of its own; polling costs nothing noticeable here
            except OSError as exc:
                if exc.errno not in (errno.EBADF, errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                break  # this filesystem cannot lock
        yield
    finally:
        os.close(fd)  # releases the lock


def lock_holder(path: Path) -> str:
    """Who holds a flock on `path`, as "pid N (command line)", from Linux's /proc/locks; best effort."""
    try:
        inode = os.stat(path).st_ino
        with open("/proc/locks", encoding="ascii", errors="replace") as table:
            # "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF"; waiters' lines have "->" after the number.
            pids = [
                fields[4]
                for fields in map(str.split, table)
                if len(fields) > 5 and fields[1] == "FLOCK" and fields[5].endswith(f":{inode}")
            ]
        if not pids:
            return "another process"
        with open(f"/proc/{pids[0]}/cmdline", "rb") as cmdline:
            argv = [a.decode(errors="replace") for a in cmdline.read().split(b"\0") if a]
    except OSError:
        return "another process"
    for i, arg in enumerate(argv):  # `python …/bin/lab up DIR` or `python -m coreos_lab up DIR`: say `lab up DIR`
        if Path(arg).name == "lab" or arg == "coreos_lab":
            argv = ["lab", *argv[i + 1 :]]
            break
    return f"pid {pids[0]} ({' '.join(argv)[:200]})"
