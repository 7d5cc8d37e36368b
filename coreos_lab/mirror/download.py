"""Resumable download of one large file into an open `.part`, hashed while it arrives.

Resume: the bytes already in the part are hashed first, then the rest is asked for with `Range: bytes=N-`.
A 206 must carry a `Content-Range` starting at N; a 200 means the server ignored Range, so the part starts
over from the same response; a 416 whose `Content-Range: bytes */SIZE` equals the part's size means the part
was already complete. Anything else starts over once with a plain request. A response shorter than its
announced length is a truncated download: the part is kept for the next run to resume.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from coreos_lab.errors import LabError
from coreos_lab.mirror.checksums import CHUNK, Hashers
from coreos_lab.mirror.upstream import CONNECT_TIMEOUT, READ_TIMEOUT, http_error, network_error
from coreos_lab.progress import Reporter

if TYPE_CHECKING:
    import requests


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
    `limit`: the size the file must have; the body is cut at one byte more (the caller refuses a larger size),
    so a server that sends without end cannot fill the disk."""
    import requests
    import urllib3

    have = part.seek(0, 2)
    range_ignored = False
    for attempt in range(2):
        hashers = Hashers(algorithms)
        if attempt == 1 or have == 0:
            have = 0
            part.seek(0)
            part.truncate()
        else:
            reporter.note(f"resuming {url} at byte {have}")
            _hash_existing(part, hashers, have, reporter)
        headers = {"Range": f"bytes={have}-"} if have else {}
        receiving = False
        try:
            with http.get(url, headers=headers, stream=True, timeout=(CONNECT_TIMEOUT, READ_TIMEOUT)) as resp:
                total = _continue_at(resp, have, url, status_error)
                if total is None and resp.status_code == 416:
                    # The part already holds the whole file.
                    return Downloaded(have, hashers.hexdigests(), have, False)
                if resp.status_code == 200 and have:
                    reporter.note(f"{url}: the server ignored Range; downloading from the start")
                    range_ignored = True
                    have = 0
                    hashers = Hashers(algorithms)
                    part.seek(0)
                    part.truncate()
                resumed_from = have
                receiving = True
                got = _receive(resp, part, hashers, have, total, url, reporter, limit)
        except _StartOver as exc:
            reporter.note(f"{url}: {exc}; downloading from the start")
            continue
        except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
            if not receiving:
                raise network_error(url, exc) from exc
            part.flush()
            raise LabError(
                f"download of {url} was cut after {part.tell()} bytes: {exc}",
                hint="run the same command again to resume",
            ) from exc
        if total is not None and got != total and (limit is None or got <= limit):
            raise LabError(
                f"download of {url} was cut: got {got} of {total} bytes (truncated download)",
                hint="run the same command again to resume",
            )
        return Downloaded(got, hashers.hexdigests(), resumed_from, range_ignored)
    raise LabError(f"{url}: the server cannot resume this download")  # unreachable: attempt 1 never resumes


def _hash_existing(part: BinaryIO, hashers: Hashers, have: int, reporter: Reporter) -> None:
    part.seek(0)
    with reporter.transfer("checking the partial download", have) as advance:
        while chunk := part.read(CHUNK):
            hashers.update(chunk)
            advance(len(chunk))


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
    got = have
    part.seek(have)
    with reporter.transfer(url.rsplit("/", 1)[-1], total, have) as advance:
        # Raw bytes as stored: never let a Content-Encoding the server added anyway change what is hashed.
        # read1 returns what has arrived (up to CHUNK), so the progress moves on slow links too.
        while (want := CHUNK if limit is None else min(CHUNK, limit + 1 - got)) > 0:
            chunk = resp.raw.read1(want, decode_content=False)
            if not chunk:
                break
            hashers.update(chunk)
            part.write(chunk)
            got += len(chunk)
            advance(len(chunk))
    part.flush()
    return got
