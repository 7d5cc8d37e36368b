"""Resumable download of one large file into an open `.part`, hashed while it arrives.

The socket is read on the calling thread; each hash and the writes to the part run on their own threads
(`chunk_worker`), so a download costs about its slowest part, not their sum.

Resume: the rest is asked for with `Range: bytes=N-` while the hashes read the N bytes already in the part.
A 206 must carry a `Content-Range` starting at N; a 200 means the server ignored Range, so the part starts
over from the same response; a 416 whose `Content-Range: bytes */SIZE` equals the part's size means the part
was already complete. Anything else starts over once with a plain request. A response shorter than its
announced length is a truncated download: the part is kept for the next run to resume.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from coreos_lab.errors import BadInput, LabError
from coreos_lab.mirror.checksums import Hashers
from coreos_lab.mirror.chunk_worker import ChunkWorker
from coreos_lab.mirror.upstream import CONNECT_TIMEOUT, READ_TIMEOUT, http_error, network_error
from coreos_lab.progress import Reporter

if TYPE_CHECKING:
    import requests

# The most one read takes from the socket. Pieces of 1 MiB are reused from the heap; 4 MiB ones cost more in
# page faults (fresh memory each time) than they save in calls.
CHUNK = 1 << 20
# Small enough that the disk writes all along the download (a sync under way is never waited for: the next one
# just starts later), so the last sync finds little left: a 100 MiB image fetch here took ~50 ms less than with
# 64 MiB, where every blob under that size was flushed whole after its last byte.
SYNC_EVERY = 4 << 20
# Without a size from the caller, the largest file accepted: a release's JSON and DIGESTS give none, and a
# server may send a body without Content-Length. CoreOS and Flatcar boxes and images are a few hundred MB.
SIZE_CAP = 16 << 30


@dataclass(frozen=True)
class Downloaded:
    size: int
    digests: dict[str, str]
    resumed_from: int  # bytes taken from an earlier part (0: downloaded from the start)
    range_ignored: bool  # the server answered a Range request with the whole file


class _StartOver(Exception):
    """The response cannot continue the part: fetch the whole file."""


def _status_error(url: str, resp: requests.Response) -> LabError:
    return http_error(url, resp.status_code, resp.reason)


def download(
    http: requests.Session,
    url: str,
    part: BinaryIO,
    algorithms: list[str],
    reporter: Reporter,
    *,
    status_error: Callable[[str, requests.Response], LabError] = _status_error,
    limit: int | None = None,
) -> Downloaded:
    """`status_error` turns an unexpected HTTP status into the error to raise (a release server's by default).
    `limit`: the size the file must have; the body is cut at one byte more (the caller refuses a larger size).
    Without it, a file larger than `SIZE_CAP` is refused here and nothing of it is kept: either way, a server
    that sends without end cannot fill the disk."""
    import requests
    import urllib3

    have = part.seek(0, 2)
    range_ignored = False
    for attempt in range(2):
        if attempt == 1 or have == 0:
            have = 0
            part.seek(0)
            part.truncate()
        else:
            reporter.note(f"resuming {url} at byte {have}")
        headers = {"Range": f"bytes={have}-"} if have else {}
        receiving = False
        try:
            with http.get(url, headers=headers, stream=True, timeout=(CONNECT_TIMEOUT, READ_TIMEOUT)) as resp:
                total = _continue_at(resp, have, url, status_error)
                if resp.status_code == 200 and have:
                    reporter.note(f"{url}: the server ignored Range; downloading from the start")
                    range_ignored = True
                    have = 0
                    part.seek(0)
                    part.truncate()
                if limit is None and total is not None and total > SIZE_CAP:
                    raise _too_large(url, part, f"announces {total} bytes, over")
                hashers = Hashers(algorithms)
                try:
                    if have:  # hashed by the hashes' threads while the rest arrives
                        hashers.update_from_file(part.fileno(), have, getattr(part, "offset", 0))
                    if total is None and resp.status_code == 416:  # the part already holds the whole file
                        return Downloaded(have, hashers.hexdigests(), have, False)
                    resumed_from = have
                    receiving = True
                    got = _receive(resp, part, hashers, have, total, url, reporter, limit)
                    digests = hashers.hexdigests()
                finally:
                    hashers.close()
        except _StartOver as exc:
            reporter.note(f"{url}: {exc}; downloading from the start")
            continue
        except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
            if not receiving:
                raise network_error(url, exc) from exc
            raise LabError(
                f"download of {url} was cut after {part.tell()} bytes: {exc}",
                hint="run the same command again to resume",
            ) from exc
        if total is not None and got != total and (limit is None or got <= limit):
            raise LabError(
                f"download of {url} was cut: got {got} of {total} bytes (truncated download)",
                hint="run the same command again to resume",
            )
        return Downloaded(got, digests, resumed_from, range_ignored)
    raise LabError(f"{url}: the server cannot resume this download")  # unreachable: attempt 1 never resumes


@contextmanager
def emptied_if_refused(part: BinaryIO) -> Iterator[None]:
    """Checks of a finished download: if one refuses it (BadInput), the part is emptied, as a complete but wrong
    file cannot be resumed into a right one."""
    try:
        yield
    except BadInput:
        part.seek(0)
        part.truncate()
        raise


def _too_large(url: str, part: BinaryIO, what: str) -> LabError:
    part.seek(0)
    part.truncate()  # not a part worth resuming
    return LabError(
        f"{url}: the server {what} the cap of {SIZE_CAP} bytes for a file of no other known size; "
        "refused, nothing kept",
        hint="check --upstream: a release server's boxes and images are a few hundred MB",
    )


def _continue_at(
    resp: requests.Response, have: int, url: str, status_error: Callable[[str, requests.Response], LabError]
) -> int | None:
    """The full size of the file (None when unknown or when a 416 says the part is complete), after checking
    that the response continues the part at byte `have`."""
    status = resp.status_code
    if have and status == 416:
        match = re.fullmatch(r"bytes \*/(\d+)", resp.headers.get("Content-Range", "").strip())
        if match and int(match.group(1)) == have:
            return None
        raise _StartOver(f"the server refused to resume at byte {have} (HTTP 416)")
    if have and status == 206:
        match = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", resp.headers.get("Content-Range", "").strip())
        if not match or int(match.group(1)) != have:
            raise _StartOver(f"the server sent Content-Range {resp.headers.get('Content-Range')!r} for byte {have}")
        return int(match.group(3)) if match.group(3) != "*" else None
    if status != 200:
        raise status_error(url, resp)
    length = resp.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def _receive(
    resp: requests.Response,
    part: BinaryIO,
    hashers: Hashers,
    have: int,
    total: int | None,
    url: str,
    reporter: Reporter,
    limit: int | None = None,
) -> int:
    """Receive the body into the part from byte `have` on; the hashes and the writes run on their own threads."""
    got = have
    cut_at = (SIZE_CAP if limit is None else limit) + 1
    part.seek(have)
    part_writer = _PartWriter(part)
    writer = ChunkWorker(part_writer, "part-writer")
    try:
        with reporter.transfer(url.rsplit("/", 1)[-1], total, have) as advance:
            # Raw bytes as stored: never let a Content-Encoding the server added anyway change what is hashed.
            # read1 returns what has arrived (up to CHUNK), so the progress moves on slow links too.
            while (want := min(CHUNK, cut_at - got)) > 0:
                chunk = resp.raw.read1(want, decode_content=False)
                if not chunk:
                    break
                hashers.update(chunk)
                writer.put(chunk)
                got += len(chunk)
                advance(len(chunk))
        writer.put(b"")  # the end: the rest is synced while the hashes catch up
    finally:
        try:
            writer.finish()  # every byte received is in the part, for the next run to resume from
        finally:
            part_writer.close()
        part.flush()
    if limit is None and got > SIZE_CAP:
        raise _too_large(url, part, "sent more than")
    return got


class _PartWriter:
    """Writes the chunks to the part. Every `SYNC_EVERY` bytes it has a thread of its own wait for them to reach
    the disk (fdatasync) without waiting itself: the disk works while the network does, a slow disk does not
    hold the download up, and the commit's fsync (`store.commit`) finds little left to write. An empty chunk is
    the end: the writer then syncs the rest itself, while the hashes catch up."""

    def __init__(self, part: BinaryIO):
        self.part = part
        self.unsynced = 0
        self._syncer = ChunkWorker(self._sync, "part-sync", backlog=1)

    def __call__(self, chunk: bytes) -> None:
        try:
            self.part.write(chunk)  # a chunk larger than the buffer goes straight to the file
            self.unsynced += len(chunk)
            if not chunk:
                self.close()
                self._sync(chunk)
            elif self.unsynced >= SYNC_EVERY and self._syncer.offer(chunk):  # else: a sync is under way
                self.unsynced = 0
        except OSError as exc:
            raise self._error(exc) from exc

    def close(self) -> None:
        """Wait for the sync under way, if any."""
        self._syncer.finish()

    def _sync(self, _: bytes) -> None:
        try:
            self.part.flush()
            os.fdatasync(self.part.fileno())
        except OSError as exc:
            raise self._error(exc) from exc

    def _error(self, exc: OSError) -> LabError:
        return LabError(
            f"cannot write {self.part.name}: {exc.strerror or exc}", hint="run the same command again to resume"
        )
