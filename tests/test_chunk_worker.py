"""ChunkWorker and Hashers: the threads that hash and write beside the reads keep the order of the bytes, hand
their errors to the producer, and stop when abandoned."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from coreos_lab.mirror.checksums import Hashers, file_digests
from coreos_lab.mirror.chunk_worker import ChunkWorker, FileRange


def test_chunks_and_file_ranges_are_consumed_in_order(tmp_path: Path) -> None:
    data = os.urandom(3 << 20)
    path = tmp_path / "prefix"
    path.write_bytes(data)
    seen: list[bytes] = []
    worker = ChunkWorker(seen.append, "test", backlog=2)
    with path.open("rb") as handle:
        worker.put(b"head")
        worker.put(FileRange(handle.fileno(), 10, len(data)))
        for i in range(20):
            worker.put(b"%d" % i)
        worker.finish()
    assert b"".join(seen) == b"head" + data[10:] + b"".join(b"%d" % i for i in range(20))


def test_the_consumers_error_reaches_the_producer_and_later_chunks_are_skipped() -> None:
    consumed: list[bytes] = []

    def consume(chunk: bytes) -> None:
        if chunk == b"bad":
            raise OSError(28, "No space left on device")
        consumed.append(chunk)

    worker = ChunkWorker(consume, "test", backlog=1)
    worker.put(b"good")
    worker.put(b"bad")
    with pytest.raises(OSError, match="No space left"):
        for _ in range(100):  # raised by a `put` as soon as the worker got there
            worker.put(b"after")
        worker.finish()
    assert consumed == [b"good"]


def test_an_abandoned_worker_skips_its_backlog_and_ends() -> None:
    started, release = threading.Event(), threading.Event()
    consumed: list[bytes] = []

    def consume(chunk: bytes) -> None:
        started.set()
        release.wait()
        consumed.append(chunk)

    worker = ChunkWorker(consume, "abandoned", backlog=3)
    for chunk in (b"1", b"2", b"3"):
        worker.put(chunk)
    started.wait()
    worker.abandon(wait=False)
    release.set()
    worker.abandon()  # waits for the chunk in progress only
    assert consumed == [b"1"]
    assert "abandoned" not in {t.name for t in threading.enumerate()}


def test_hashers_match_hashlib_with_a_prefix_from_the_file(tmp_path: Path) -> None:
    data = os.urandom(5 << 20)
    path = tmp_path / "part"
    path.write_bytes(data[: 2 << 20])
    hashers = Hashers(["sha256", "sha512", "sha256"])
    with path.open("rb") as handle:
        hashers.update_from_file(handle.fileno(), 2 << 20)
        hashers.update(data[2 << 20 :])
        digests = hashers.hexdigests()
    assert digests == {"sha256": hashlib.sha256(data).hexdigest(), "sha512": hashlib.sha512(data).hexdigest()}
    path.write_bytes(data)
    assert file_digests(path, ["sha512"]) == {"sha512": digests["sha512"]}


def test_closed_hashers_leave_no_thread_behind() -> None:
    before = {t.name for t in threading.enumerate()}
    hashers = Hashers(["sha256", "sha512"])
    hashers.update(b"x" * (1 << 20))
    hashers.close()
    assert {t.name for t in threading.enumerate()} - before == set()


def test_offer_takes_a_chunk_only_while_the_backlog_has_room() -> None:
    release = threading.Event()
    consumed: list[bytes] = []

    def consume(chunk: bytes) -> None:
        release.wait()
        consumed.append(chunk)

    worker = ChunkWorker(consume, "offered", backlog=1)
    assert worker.offer(b"first")
    assert not worker.offer(b"second")  # the first is still being consumed
    release.set()
    worker.finish()
    assert consumed == [b"first"]
