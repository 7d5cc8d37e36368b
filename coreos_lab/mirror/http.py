"""The mirror over HTTP (aiohttp): what `layout` answers for a path, turned into a response.

Box files go out with sendfile, in pieces the live view and the access log follow, with ETag, Last-Modified,
conditional requests and one Range (see `effective_headers` for the Range rules Vagrant's curl needs).
Metadata `url`s are absolute: under `base_url` when given, else under the scheme and Host of the request, so
one mirror answers as 127.0.0.1:8080 on the host and under any other name elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import math
import os
import re
import socket
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from functools import cache
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote_to_bytes, urlsplit

from aiohttp import ETag, web
from multidict import CIMultiDict

from coreos_lab.mirror.images.store import ImageStore
from coreos_lab.mirror.layout import (
    NO_SUCH_PATH,
    Answer,
    Forbidden,
    Metadata,
    MirrorLayout,
    NotFound,
    Page,
    StoredFile,
    Text,
    file_missing,
)
from coreos_lab.mirror.store import BOX, MirrorStore
from coreos_lab.mirror.transfers import TransferTracker
from coreos_lab.server import name_taken

# sendfile in pieces so the live view and the access log see progress; large enough to cost nothing.
SENDFILE_CHUNK = 16 * 1024 * 1024
# The send buffer a box's connection asks for: Linux doubles it and caps it at net.core.wmem_max (socket(7)),
# while its own tuning stops at tcp_wmem's maximum. A larger buffer means fewer sendfile calls and event-loop
# wake-ups per GiB (asyncio re-arms epoll after each call): about a fifth less server CPU per GiB with 8 clients,
# bench/mirror_throughput.py (`send_buffer_size`).
WMEM_MAX = Path("/proc/sys/net/core/wmem_max")
TCP_WMEM = Path("/proc/sys/net/ipv4/tcp_wmem")
# A Host header is only trusted as a base URL when it looks like one (it ends up in JSON and HTML).
HOST_RE = re.compile(r"^(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$")
OPEN_RANGE_RE = re.compile(r"^\s*bytes\s*=\s*([0-9]+)\s*-\s*$")
# `bytes=-0`: a suffix of no bytes, which no representation satisfies (RFC 9110 §14.1.3; aiohttp reads it as
# the whole file, docs/field-notes.md §8).
EMPTY_SUFFIX_RE = re.compile(r"\s*bytes\s*=\s*-\s*0+\s*", re.ASCII | re.IGNORECASE)
# No file name on Linux is longer (NAME_MAX): a longer path segment names nothing the mirror holds.
NAME_MAX_BYTES = 255
# What the file system answers for a path that names nothing here, and for one it may not read.
_NOT_THERE = (errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG, errno.ELOOP)
_NOT_READABLE = (errno.EACCES, errno.EPERM)
ANSWERED_METHODS = ("GET", "HEAD")
# The tasks sending a file body right now, so a server that stops can cut them (`cut_transfers`).
IN_FLIGHT = web.AppKey("file bodies being sent", set["asyncio.Task[object]"])


def transfer_tracker(app: web.Application, *, live_view: bool = False) -> TransferTracker:
    """The one tracker of the app's file transfers (boxes and image blobs), its live view running with the app."""
    tracker = TransferTracker(live=live_view)

    async def start_view(_app: web.Application) -> None:
        tracker.start()

    async def stop_view(_app: web.Application) -> None:
        tracker.stop()

    app.on_startup.append(start_view)
    app.on_cleanup.append(stop_view)
    app[IN_FLIGHT] = set()
    return tracker


def cut_transfers(app: web.Application) -> None:
    """End every file body being sent now: its connection is aborted (what the client has not read is dropped)."""
    for task in list(app.get(IN_FLIGHT, ())):
        task.cancel()


def setup(app: web.Application, mirror_root: Path, *, base_url: str | None, tracker: TransferTracker) -> None:
    """Add the mirror's route to `app`: every path not taken by a route added before it."""
    handlers = MirrorHandlers(MirrorLayout(MirrorStore(mirror_root)), base_url=base_url, tracker=tracker)
    app.router.add_route("*", r"/{path:[\s\S]*}", handlers.handle)  # also a decoded newline


def describe(root: Path, listen_url: str, base_url: str | None) -> str:
    """What the server announces once it listens: where, what, and how to use it."""
    all_names = MirrorStore(root).names(BOX)
    names = [name for name in all_names if name_taken(name) is None]
    base = base_url or listen_url
    where = f"serving {root} on {listen_url}" + (f" (metadata URLs under {base_url})" if base_url else "")
    images = ImageStore(root).images()
    counts = f"{len(names)} box name{'s' if len(names) != 1 else ''}"
    counts += f", {len(images)} image{'s' if len(images) != 1 else ''} at /v2/" if images else ""
    lines = [f"{where}: {counts}; Ctrl-C stops"]
    lines += [f"  vagrant box add {base}/{name}" for name in names]
    lines += [f"  docker pull {urlsplit(base).netloc}/{image.name}" for image in images]
    lines += [
        f"  not served: box {name!r} ({name_taken(name)}); import it again under another name"
        for name in all_names
        if name not in names
    ]
    return "\n".join(lines)


class MirrorHandlers:
    """The aiohttp side of the mirror: asks the layout, answers with a response."""

    def __init__(self, layout: MirrorLayout, *, base_url: str | None, tracker: TransferTracker):
        self.layout = layout
        self.base_url = base_url.rstrip("/") if base_url else None
        self.tracker = tracker

    def base_for(self, request: web.Request) -> str:
        """The base URL written into metadata and the index page."""
        if self.base_url:
            return self.base_url
        if HOST_RE.match(request.host):
            return f"{request.scheme}://{request.host}"
        # An odd Host header: answer with the address the client actually reached.
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        host, port = (sockname[0], sockname[1]) if sockname else ("127.0.0.1", 80)
        return f"{request.scheme}://{f'[{host}]' if ':' in host else host}:{port}"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Every request that reaches the mirror: GET and HEAD are answered, other methods refused."""
        path = request.rel_url.raw_path
        if any(len(unquote_to_bytes(segment)) > NAME_MAX_BYTES for segment in path.split("/")):
            answer: Answer = NO_SUCH_PATH
        else:
            answer = await self.resolve(path, self.base_for(request))
        if request.method not in ANSWERED_METHODS:
            if answer == NO_SUCH_PATH:
                raise web.HTTPNotFound()
            raise web.HTTPMethodNotAllowed(request.method, ANSWERED_METHODS)
        match answer:
            case Metadata(document):
                # Vagrant decides "metadata" from the HEAD's Content-Type (docs/field-notes.md §1); aiohttp
                # answers HEAD from this GET. Range is ignored on purpose: metadata changes as boxes are added,
                # so a resumed fetch would splice two documents; a full 200 makes curl start over.
                return web.json_response(document, headers={"Cache-Control": "no-cache"})
            case StoredFile():
                return await self.send_file(request, answer)
            case Text(text):
                return web.Response(text=text)
            case Page(page):
                return web.Response(text=page, content_type="text/html")
            case NotFound(text):
                raise web.HTTPNotFound(text=text)
            case Forbidden(text):
                raise web.HTTPForbidden(text=text)

    async def resolve(self, path: str, base: str) -> Answer:
        """The layout's answer, found off the event loop (it lists directories and reads records)."""
        try:
            return await asyncio.to_thread(self.layout.resolve, path, base)
        except OSError as exc:
            if exc.errno in _NOT_THERE:
                return NO_SUCH_PATH
            if exc.errno in _NOT_READABLE:
                return Forbidden(f"{path}: not readable by the server\n")
            raise

    async def send_file(self, request: web.Request, stored: StoredFile) -> web.StreamResponse:
        try:
            handle, stat = await asyncio.to_thread(open_file, stored.path)
        except OSError as exc:
            raise web.HTTPNotFound(text=file_missing(stored.label).text) from exc
        response = BoxFileResponse(tracker=self.tracker, label=stored.label)
        try:
            await response.send(request, handle, stat)
        finally:
            handle.close()
        return response


def open_file(path: Path) -> tuple[BinaryIO, os.stat_result]:
    """The file, open, and its stat (of what was opened: the file may be replaced meanwhile)."""
    handle = path.open("rb")
    try:
        return handle, os.fstat(handle.fileno())
    except OSError:
        handle.close()
        raise


@cache
def send_buffer_size() -> int | None:
    """SO_SNDBUF for a file body: net.core.wmem_max when the kernel's doubling of it gives more than TCP's own
    tuning reaches (tcp_wmem's maximum), else None (setting it would turn the tuning off for a smaller buffer)."""
    try:
        wmem_max = int(WMEM_MAX.read_text())
        tuned_max = int(TCP_WMEM.read_text().split()[2])
    except (OSError, ValueError, IndexError):
        return None
    return wmem_max if 2 * wmem_max > tuned_max else None


# -- Range -------------------------------------------------------------------------------------------------
def file_etag(stat: os.stat_result) -> str:
    """The file's ETag: mtime and size, as aiohttp's FileResponse writes it (so ETags saved by clients of earlier
    versions still match)."""
    return f"{stat.st_mtime_ns:x}-{stat.st_size:x}"


def if_range_matches(value: str, *, etag: str, mtime: float) -> bool:
    """RFC 9110 §13.1.5: a strong ETag equal to ours, or a date equal to our Last-Modified (which aiohttp
    writes as the mtime rounded up to the second)."""
    value = value.strip()
    if value.startswith(('"', "W/")):
        return value == f'"{etag}"'
    try:
        return int(parsedate_to_datetime(value).timestamp()) == math.ceil(mtime)
    except (TypeError, ValueError, IndexError):
        return False


def effective_headers(headers: Mapping[str, str], *, size: int, etag: str, mtime: float) -> CIMultiDict[str] | None:
    """The request headers the Range work (206, Content-Range, 416) should see, or None to use them as they are.

    If-Range is decided here (and dropped) and the Range dropped when the whole box is the better answer
    (RFC 9110 §14.2 lets a server ignore Range):

    - If-Range does not match → the client's partial copy is stale: send it all.
    - several ranges → one 200 is simpler than multipart/byteranges, and every client accepts it.
    - `bytes=N-` with N ≥ size: curl's `--continue-at -` (Vagrant's downloader) with a complete or longer
      leftover temp file. A 416 makes curl fail with exit 22, which Vagrant 2.3.4 treats as fatal on every
      retry until `--clean` (docs/field-notes.md §1). A 200 carrying the full length makes curl report "the entire
      document is already downloaded" when N == size (Vagrant then checks the checksum) and exit 33 when
      N > size, on which Vagrant restarts the download from zero. Bounded ranges still get their 416.
    """
    range_value = headers.get("Range")
    if_range = headers.get("If-Range")
    if range_value is None:
        return None
    if range_value.partition("=")[0].strip().lower() != "bytes":
        # RFC 9110 §14.2: a range unit the server does not know is ignored; the answer is the whole file.
        view = CIMultiDict(headers)
        view.popall("Range", None)
        view.popall("If-Range", None)
        return view
    stale = if_range is not None and not if_range_matches(if_range, etag=etag, mtime=mtime)
    keep = not stale and "," not in range_value and not starts_at_or_after_end(range_value, size)
    if keep and if_range is None:
        return None
    view = CIMultiDict(headers)
    view.popall("If-Range", None)
    if not keep:
        view.popall("Range", None)
    return view


def starts_at_or_after_end(range_value: str, size: int) -> bool:
    """`bytes=N-` with N ≥ size (what `curl --continue-at -` sends for a complete or longer file)."""
    open_range = OPEN_RANGE_RE.match(range_value)
    return open_range is not None and size > 0 and int(open_range.group(1)) >= size


def byte_range(requested: slice, size: int) -> tuple[int, int] | None:
    """(offset, count) of the one range aiohttp parsed from Range (`request.http_range`) in a file of `size`
    bytes, None without a Range; ValueError when the range cannot be satisfied (as FileResponse does; also any
    range of an empty file, RFC 9110 §14.1.3)."""
    start, end = requested.start, requested.stop
    if start is None:
        return None
    if size == 0:
        raise ValueError("the file is empty")
    if start < 0 and end is None:  # bytes=-N: the last N bytes
        start = max(size + start, 0)
        return start, size - start
    if start >= size:
        raise ValueError(f"range starts at {start}, the file has {size} bytes")
    return start, min(end if end is not None else size, size) - start


def precondition_status(request: web.BaseRequest, etag: str, mtime: float) -> int | None:
    """412 or 304 when the conditional headers say so (RFC 9110 §13.2.2, as FileResponse decides), else None."""

    def matches(etags: tuple[ETag, ...], *, weak: bool) -> bool:
        return any(e.value in ("*", etag) and (weak or not e.is_weak) for e in etags)

    if_match, if_none_match = request.if_match, request.if_none_match
    if if_match is not None and not matches(if_match, weak=False):
        return web.HTTPPreconditionFailed.status_code
    unmodified_since = request.if_unmodified_since
    if unmodified_since is not None and if_match is None and mtime > unmodified_since.timestamp():
        return web.HTTPPreconditionFailed.status_code
    if if_none_match is not None and matches(if_none_match, weak=True):
        return web.HTTPNotModified.status_code
    modified_since = request.if_modified_since
    if modified_since is not None and if_none_match is None and mtime <= modified_since.timestamp():
        return web.HTTPNotModified.status_code
    return None


class BoxFileResponse(web.StreamResponse):
    """A stored file (a box, an image blob) as aiohttp's FileResponse would answer it (ETag, Last-Modified, conditional requests, HEAD,
    one Range), its body sent with `loop.sendfile` in pieces that the tracker (live view) and the access log
    (`bytes_sent`) follow. Every stored file goes out as bytes: a box must never look like metadata to Vagrant.

    The body goes to the transport after `prepare()`, which has handed the header block to it by then
    (aiohttp documents prepare as sending the headers; the transport keeps the order of what it is given).
    `loop.sendfile` falls back to read/write by itself where the transport cannot sendfile (TLS).
    """

    def __init__(self, *, tracker: TransferTracker, label: str, etag: str | None = None):
        super().__init__()
        self._tracker = tracker
        self._label = label
        self._etag = etag  # the file's own when None; a content-addressed blob's is its digest
        self.bytes_sent = 0

    async def send(self, request: web.Request, handle: BinaryIO, stat: os.stat_result) -> None:
        size, mtime, etag = stat.st_size, stat.st_mtime, self._etag or file_etag(stat)
        status = precondition_status(request, etag, mtime)
        if status is not None:
            self.set_status(status)
            if status == web.HTTPNotModified.status_code:
                self.etag, self.last_modified = etag, mtime
            else:
                self.content_length = 0
            await self.prepare(request)
            return
        headers = effective_headers(request.headers, size=size, etag=etag, mtime=mtime)
        view = request.clone(headers=headers) if headers is not None else request
        try:
            if EMPTY_SUFFIX_RE.fullmatch(view.headers.get("Range", "")):
                raise ValueError("a suffix of zero bytes")  # aiohttp reads `-0` as `0-`: the whole file
            chosen = byte_range(view.http_range, size)
        except ValueError:
            self.headers["Content-Range"] = f"bytes */{size}"
            self.set_status(web.HTTPRequestRangeNotSatisfiable.status_code)
            await self.prepare(request)
            return
        offset, count = chosen if chosen is not None else (0, size)
        if chosen is not None:
            self.set_status(web.HTTPPartialContent.status_code)
            self.headers["Content-Range"] = f"bytes {offset}-{offset + count - 1}/{size}"
        self.content_type = "application/octet-stream"
        self.etag, self.last_modified, self.content_length = etag, mtime, count
        self.headers["Accept-Ranges"] = "bytes"
        await self.prepare(request)
        if count > 0 and request.method != "HEAD":
            await self._send_body(request, handle, offset, count)
        await self.write_eof()

    async def _send_body(self, request: web.Request, handle: BinaryIO, offset: int, count: int) -> None:
        transport = request.transport
        if transport is None:
            raise ConnectionResetError("Connection lost")
        loop = asyncio.get_running_loop()
        sock, buffer_size = transport.get_extra_info("socket"), send_buffer_size()
        if sock is not None and buffer_size is not None:
            with contextlib.suppress(OSError):  # only a hint: a closing socket fails in sendfile, with its error
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer_size)
        transfer = self._tracker.begin(request.remote or "-", self._label, count)
        in_flight = request.app.get(IN_FLIGHT, set())
        task = asyncio.current_task()
        if task is not None:
            in_flight.add(task)
        try:
            end = offset + count
            while offset < end:
                piece = min(SENDFILE_CHUNK, end - offset)
                await loop.sendfile(transport, handle, offset, piece)
                offset += piece
                self.bytes_sent += piece
                transfer.advance(piece)
        except asyncio.CancelledError:
            # Cut (the server stops): a client that stopped reading must not hold the connection open with the
            # unsent rest of a header block or a piece in the buffer, as a close (which flushes first) would.
            transport.abort()
            raise
        finally:
            in_flight.discard(task)
            transfer.finish()
