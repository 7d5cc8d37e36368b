"""A thread that consumes a stream of byte chunks in order: hashing and disk writes run beside the reads.

hashlib releases the GIL while it hashes a buffer larger than 2 KiB, and file writes release it too, so with
one worker per consumer (each hash, the file) a download costs about its slowest consumer instead of the sum
of all of them and the network. Each worker lags behind at most `backlog` chunks: a slow consumer slows the
producer down instead of filling the memory.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

BACKLOG = 32  # chunks a worker may lag behind (of 1 MiB in a download: 32 MiB, shared by all the workers)
RANGE_CHUNK = 1 << 20


@dataclass(frozen=True)
class FileRange:
    """Bytes `start` to `end` (exclusive) of an open file, read by the worker itself with `os.pread`: the
    file's position is left alone, so another thread may write further on meanwhile."""

    fd: int
    start: int
    end: int


class ChunkWorker:
    """Calls `consume(chunk)` on its own thread for every chunk put, in order. A `FileRange` put among the
    chunks is read and consumed there, in `RANGE_CHUNK` pieces.

    The first exception `consume` raises is raised again by the next `put` or by `finish`; the chunks after
    it are skipped."""

    def __init__(self, consume: Callable[[bytes], None], name: str, backlog: int = BACKLOG):
        self._consume = consume
        # An unbounded queue bounded by the semaphore: the end marker never blocks, even on a full backlog.
        self._queue: queue.SimpleQueue[bytes | FileRange | None] = queue.SimpleQueue()
        self._slots = threading.Semaphore(backlog)
        self._error: BaseException | None = None
        self._dropping = False
        self._ended = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, chunk: bytes | FileRange) -> None:
        if self._error is not None:
            raise self._error
        self._slots.acquire()
        self._queue.put(chunk)

    def offer(self, chunk: bytes | FileRange) -> bool:
        """`put` unless the backlog is full; False then (the chunk is not taken)."""
        if self._error is not None:
            raise self._error
        if not self._slots.acquire(blocking=False):
            return False
        self._queue.put(chunk)
        return True

    def finish(self) -> None:
        """Wait until every chunk put is consumed; raise what `consume` raised, if anything."""
        self._end()
        self._thread.join()
        if self._error is not None:
            raise self._error

    def abandon(self, *, wait: bool = True) -> None:
        """Skip the chunks still waiting and stop (waiting at most for the piece being consumed)."""
        self._dropping = True
        self._end()
        if wait and threading.current_thread() is not self._thread:
            self._thread.join()

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            self._queue.put(None)

    def _run(self) -> None:
        while (chunk := self._queue.get()) is not None:
            try:
                if not self._dropping and self._error is None:
                    if isinstance(chunk, FileRange):
                        self._consume_range(chunk)
                    else:
                        self._consume(chunk)
            except BaseException as exc:  # handed to the producer's thread
                self._error = exc
            finally:
                self._slots.release()

    def _consume_range(self, span: FileRange) -> None:
        offset = span.start
        while offset < span.end and not self._dropping:
            piece = os.pread(span.fd, min(RANGE_CHUNK, span.end - offset), offset)
            if not piece:
                raise EOFError(f"the file ends at byte {offset}, before byte {span.end}")
            self._consume(piece)
            offset += len(piece)
