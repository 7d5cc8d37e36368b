"""Box mirror routes: Vagrant box metadata, box files (sendfile, Range), seed-style names, an index page.

URL scheme (the store's layout, DESIGN §3):

    /                                                   index: boxes and copy-paste `vagrant box add` commands
    /<name>, /<name>.json                               metadata: every stored version and provider of <name>
    /<name>/<version>/<provider>-<arch>.box             the box (only catalog entries; never .part or records)
    /<distro>_production_vagrant.json                   seed-style: newest <distro>-stable (or the only channel)
    /<channel>/<distro>_production_vagrant.json         seed-style: newest <distro>-<channel>
    /<channel>/amd64-usr/<version|current>/<distro>_production_vagrant.json
                                                        the release servers' layout, so an existing URL works
                                                        with only its scheme and host replaced
    /<distro>/<channel>/amd64-usr/<version|current>/{version.txt, <distro>_production_vagrant.{json,box,
        box.DIGESTS,box.DIGESTS.asc,box.sig}}           a release server for another mirror's
                                                        `lab mirror fetch --upstream <base>/<distro>`

<distro> is `coreos` or `flatcar`. Metadata `url`s are absolute: under `base_url` when given, else under
the scheme and Host of the request, so one mirror answers as 127.0.0.1:8080 on the host and under any other
name elsewhere.
"""

from __future__ import annotations

import asyncio
import html
import math
import os
import re
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import IO, Any

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from multidict import CIMultiDict

from coreos_lab.errors import BadInput
from coreos_lab.mirror.store import BoxEntry, MirrorStore, version_key
from coreos_lab.mirror.transfers import TransferTracker

NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]*"
SEED_PATTERN = r"(?:coreos|flatcar)_production_vagrant\.json"
SEED_RE = re.compile(r"^(coreos|flatcar)_production_vagrant\.json$")
DEFAULT_CHANNEL = "stable"
UPSTREAM_PROVIDER = "virtualbox"  # the release servers publish the VirtualBox box as <distro>_production_vagrant.box
# sendfile in pieces so the live view and the access log see progress; large enough to cost nothing.
SENDFILE_CHUNK = 16 * 1024 * 1024
# A Host header is only trusted as a base URL when it looks like one (it ends up in JSON and HTML).
HOST_RE = re.compile(r"^(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$")
OPEN_RANGE_RE = re.compile(r"^\s*bytes\s*=\s*([0-9]+)\s*-\s*$")

MIRROR_KEY: web.AppKey[Mirror] = web.AppKey("mirror")


def setup(app: web.Application, mirror_root: Path, *, base_url: str | None = None, live_view: bool = False) -> None:
    """Add the mirror routes to `app`."""
    mirror = Mirror(MirrorStore(mirror_root), base_url=base_url, tracker=TransferTracker(live=live_view))
    app[MIRROR_KEY] = mirror
    app.router.add_get("/", mirror.index)
    app.router.add_get(f"/{{name:{NAME_PATTERN}}}", mirror.metadata)
    app.router.add_get(f"/{{channel:[a-z][a-z0-9-]*}}/{{seed:{SEED_PATTERN}}}", mirror.channel_seed)
    app.router.add_get(
        f"/{{channel:[a-z][a-z0-9-]*}}/amd64-usr/{{release:[0-9A-Za-z.-]+}}/{{seed:{SEED_PATTERN}}}",
        mirror.release_seed,
    )
    app.router.add_get(f"/{{name:{NAME_PATTERN}}}/{{version:[0-9][0-9A-Za-z.-]*}}/{{file:[^/]+}}", mirror.box)
    app.router.add_get(
        "/{distro:coreos|flatcar}/{channel:[a-z][a-z0-9-]*}/amd64-usr/{release:[0-9A-Za-z.-]+}/{file:[^/]+}",
        mirror.release_file,
    )

    async def start_view(_app: web.Application) -> None:
        mirror.tracker.start()

    async def stop_view(_app: web.Application) -> None:
        mirror.tracker.stop()

    app.on_startup.append(start_view)
    app.on_cleanup.append(stop_view)


def check_root(root: Path) -> Path:
    """The mirror root to serve, or BadInput naming it."""
    if not root.is_dir():
        what = "is not a directory" if root.exists() else "does not exist"
        raise BadInput(
            f"mirror root {root} {what}",
            hint="add boxes with `lab mirror import` / `lab mirror fetch`, or pass --root",
        )
    return root


def check_base_url(base_url: str) -> str:
    """`--base-url`: an absolute http(s) URL without query or fragment; returned without a trailing '/'."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(base_url)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname) and not parts.query and not parts.fragment
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        valid = False
    if not valid:
        raise BadInput(
            f"invalid --base-url {base_url!r}: give an absolute http(s) URL such as http://10.0.2.2:8080",
        )
    return base_url.rstrip("/")


def describe(root: Path, listen_url: str, base_url: str | None) -> str:
    """What the server announces once it listens: where, what, and how to use it."""
    names = MirrorStore(root).names()
    base = base_url or listen_url
    where = f"serving {root} on {listen_url}" + (f" (metadata URLs under {base_url})" if base_url else "")
    lines = [f"{where}: {len(names)} box name{'s' if len(names) != 1 else ''}; Ctrl-C stops"]
    lines += [f"  vagrant box add {base}/{name}" for name in names]
    return "\n".join(lines)


def not_found(text: str) -> web.HTTPNotFound:
    return web.HTTPNotFound(text=text.rstrip("\n") + "\n")


class Mirror:
    def __init__(self, store: MirrorStore, *, base_url: str | None, tracker: TransferTracker):
        self.store = store
        self.base_url = base_url.rstrip("/") if base_url else None
        self.tracker = tracker

    # -- helpers -----------------------------------------------------------------------------------------
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

    # -- metadata ----------------------------------------------------------------------------------------
    async def metadata(self, request: web.Request) -> web.Response:
        requested = request.match_info["name"]
        base = self.base_for(request)
        names = [requested]
        if requested.endswith(".json"):
            names.append(requested.removesuffix(".json"))
        for name in names:
            doc = self.store.vagrant_metadata(name, base)
            if doc is not None:
                return metadata_response(doc)
        seed = SEED_RE.match(requested)
        if seed:
            return self._seed(seed.group(1), None, None, base)
        raise not_found(f"no box named {names[-1]!r} in this mirror (see {base}/)")

    async def channel_seed(self, request: web.Request) -> web.Response:
        distro = request.match_info["seed"].split("_", 1)[0]
        return self._seed(distro, request.match_info["channel"], None, self.base_for(request))

    async def release_seed(self, request: web.Request) -> web.Response:
        distro = request.match_info["seed"].split("_", 1)[0]
        release = request.match_info["release"]
        channel = request.match_info["channel"]
        return self._seed(distro, channel, None if release == "current" else release, self.base_for(request))

    def _seed(self, distro: str, channel: str | None, release: str | None, base: str) -> web.Response:
        """Upstream's per-release JSON, answered from the store: one version (the newest, or `release`)."""
        name = f"{distro}-{channel}" if channel else self.default_channel_name(distro, base)
        doc = self.store.vagrant_metadata(name, base)
        if doc is None:
            raise not_found(f"no box named {name!r} in this mirror (see {base}/)")
        versions = doc["versions"]
        if release is None:
            chosen = max(versions, key=lambda v: version_key(v["version"]))
        else:
            matching = [v for v in versions if v["version"] == release]
            if not matching:
                stored = ", ".join(v["version"] for v in versions)
                raise not_found(f"{name} has no version {release!r} in this mirror (stored: {stored})")
            chosen = matching[0]
        return metadata_response(doc | {"versions": [chosen]})

    def default_channel_name(self, distro: str, base: str) -> str:
        """`<distro>-stable` when stored, else the only stored `<distro>-*` channel; else a 404 naming them."""
        names = [n for n in self.store.names() if n.startswith(f"{distro}-")]
        preferred = f"{distro}-{DEFAULT_CHANNEL}"
        if preferred in names or not names:
            return preferred
        if len(names) == 1:
            return names[0]
        choices = " ".join(f"{base}/{n.split('-', 1)[1]}/{distro}_production_vagrant.json" for n in names)
        raise not_found(f"no {preferred} in this mirror; pick a channel: {choices}")

    # -- boxes -------------------------------------------------------------------------------------------
    async def box(self, request: web.Request) -> web.StreamResponse:
        name, version, file = (request.match_info[k] for k in ("name", "version", "file"))
        entry = self.find_entry(name, version, file)
        if entry is None:
            raise not_found(f"no box at /{name}/{version}/{file} in this mirror")
        return self.send_file(request, self.store.box_path(entry.key), entry.key.relpath)

    def send_file(self, request: web.Request, path: Path, label: str) -> web.StreamResponse:
        try:
            resolved = path.resolve(strict=True)
            stat = resolved.stat()
        except OSError as exc:
            raise not_found(f"file missing: /{label}") from exc
        if not resolved.is_relative_to(self.store.root.resolve()):
            # A symlink in the store pointing elsewhere: never follow it out of the root.
            raise web.HTTPForbidden(text="forbidden: the file lies outside the mirror root\n")
        headers = effective_headers(request.headers, size=stat.st_size, etag=aiohttp_etag(stat), mtime=stat.st_mtime)
        view = request.clone(headers=headers) if headers is not None else request
        return BoxFileResponse(resolved, view=view, tracker=self.tracker, label=label)

    # -- the release servers' layout, for another mirror to fetch from ----------------------------------------
    async def release_file(self, request: web.Request) -> web.StreamResponse:
        """`/<distro>/<channel>/amd64-usr/<version|current>/<file>`: what `lab mirror fetch --upstream
        <this>/<distro>` reads. The box, version.txt and the JSON (rewritten to this server) always; DIGESTS
        and signatures when the box was fetched from a release server (kept as they came, so a downstream
        fetch checks the same sha512 and signatures against the same bytes)."""
        distro, channel, release, file = (request.match_info[k] for k in ("distro", "channel", "release", "file"))
        name = f"{distro}-{channel}"
        entries = [e for e in self.store.entries(name) if e.provider == UPSTREAM_PROVIDER]
        if release != "current":
            entries = [e for e in entries if e.version == release]
        if not entries:
            raise not_found(f"no {UPSTREAM_PROVIDER} box {name} {release} in this mirror")
        entry = entries[-1]
        stem = f"{distro}_production_vagrant"
        if file == "version.txt":
            variable = f"{distro.upper()}_VERSION"
            return web.Response(text=f"{variable}={entry.version}\n{variable}_ID={entry.version}\n")
        if file == f"{stem}.json":
            return self._seed(distro, channel, entry.version, self.base_for(request))
        if file == f"{stem}.box":
            return self.send_file(request, self.store.box_path(entry.key), entry.key.relpath)
        if file in (f"{stem}.box.DIGESTS", f"{stem}.box.DIGESTS.asc", f"{stem}.box.sig"):
            side = self.store.upstream_dir(entry.name, entry.version) / file
            if side.is_file():
                return self.send_file(request, side, f"{entry.name}/{entry.version}/upstream/{file}")
            raise not_found(f"{name} {entry.version} was not fetched from a release server: no {file}")
        raise not_found(f"no {file} in the release layout (version.txt, {stem}.json, .box, .box.DIGESTS, …)")

    def find_entry(self, name: str, version: str, file: str) -> BoxEntry | None:
        for entry in self.store.entries(name):
            if entry.version == version and file == f"{entry.key.stem}.box":
                return entry
        return None

    # -- index -------------------------------------------------------------------------------------------
    async def index(self, request: web.Request) -> web.Response:
        return web.Response(text=render_index(self.store.entries(), self.base_for(request)), content_type="text/html")


def metadata_response(doc: dict[str, Any]) -> web.Response:
    # Vagrant decides "metadata" from the HEAD's Content-Type (DESIGN §3); aiohttp answers HEAD from this GET.
    # Range is ignored on purpose: metadata changes as boxes are added, so a resumed fetch would splice
    # two documents; a full 200 makes curl start over.
    return web.json_response(doc, headers={"Cache-Control": "no-cache"})


# -- Range -------------------------------------------------------------------------------------------------
def aiohttp_etag(stat: os.stat_result) -> str:
    """The ETag aiohttp's FileResponse sends for this file (tests pin the format)."""
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
    """The request headers FileResponse should see, or None to use them as they are.

    FileResponse does the Range work (206, Content-Range, 416) but only knows date If-Range (compared with
    the sub-second mtime, so an exact echo of Last-Modified fails). We decide If-Range here and drop the
    Range when the whole box is the better answer (RFC 9110 §14.2 lets a server ignore Range):

    - If-Range does not match → the client's partial copy is stale: send it all.
    - several ranges → one 200 is simpler than multipart/byteranges, and every client accepts it.
    - `bytes=N-` with N ≥ size: curl's `--continue-at -` (Vagrant's downloader) with a complete or longer
      leftover temp file. A 416 makes curl fail with exit 22, which Vagrant 2.3.4 treats as fatal on every
      retry until `--clean` (DESIGN §3). A 200 carrying the full length makes curl report "the entire
      document is already downloaded" when N == size (Vagrant then checks the checksum) and exit 33 when
      N > size, on which Vagrant restarts the download from zero. Bounded ranges still get their 416.
    """
    range_value = headers.get("Range")
    if_range = headers.get("If-Range")
    if range_value is None:
        return None
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


class BoxFileResponse(web.FileResponse):
    """FileResponse (sendfile, ETag, Last-Modified, HEAD, Range) that answers `view` (the request with the
    Range decided above) and reports progress to the tracker."""

    def __init__(self, path: Path, *, view: web.BaseRequest, tracker: TransferTracker, label: str):
        super().__init__(path)
        self._view = view
        self._tracker = tracker
        self._label = label
        self.bytes_sent = 0

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        return await super().prepare(self._view)

    async def _sendfile(self, request: web.BaseRequest, fobj: IO[Any], offset: int, count: int) -> AbstractStreamWriter:
        # Same as FileResponse._sendfile, in pieces; loop.sendfile falls back to read/write where the
        # transport cannot sendfile (TLS).
        writer = await web.StreamResponse.prepare(self, request)
        assert writer is not None
        transport = request.transport
        if transport is None:
            raise ConnectionResetError("Connection lost")
        loop = asyncio.get_running_loop()
        transfer = self._tracker.begin(request.remote or "-", self._label, count)
        try:
            end = offset + count
            while offset < end:
                piece = min(SENDFILE_CHUNK, end - offset)
                await loop.sendfile(transport, fobj, offset, piece)
                offset += piece
                self.bytes_sent += piece
                transfer.advance(piece)
        finally:
            transfer.finish()
        await self.write_eof()
        return writer


# -- index page --------------------------------------------------------------------------------------------
def render_index(entries: list[BoxEntry], base: str) -> str:
    e = html.escape
    by_name: dict[str, list[BoxEntry]] = {}
    for entry in entries:
        by_name.setdefault(entry.name, []).append(entry)
    sections = []
    for name, boxes in by_name.items():
        url = f"{base}/{name}"
        newest = boxes[-1].version
        rows = "".join(
            f"<tr><td>{e(b.version)}</td><td>{e(b.provider)}</td><td>{e(b.architecture)}</td>"
            f'<td>{b.size:,}</td><td><code>{e(b.sha256[:16])}…</code></td><td><a href="{e(b.box_url(base))}">box</a></td></tr>'
            for b in reversed(boxes)
        )
        sections.append(
            f"<h2>{e(name)}</h2>\n"
            f"<pre>vagrant box add {e(url)}\n"
            f"vagrant box add --box-version {e(newest)} {e(url)}</pre>\n"
            f'<p>In a Vagrantfile: <code>config.vm.box = "{e(name)}"</code> and '
            f'<code>config.vm.box_url = "{e(url)}"</code> · <a href="{e(url)}.json">metadata</a></p>\n'
            "<table><tr><th>version</th><th>provider</th><th>arch</th><th>bytes</th><th>sha256</th><th></th></tr>"
            f"{rows}</table>"
        )
    body = "\n".join(sections) if sections else "<p>No boxes yet: add some with <code>lab mirror import</code>.</p>"
    return (
        '<!doctype html>\n<html><head><meta charset="utf-8"><title>coreos-lab box mirror</title>\n'
        "<style>body{font-family:sans-serif;margin:2em}pre,code{background:#f4f4f4}pre{padding:.5em}"
        "td,th{padding:.2em .8em;text-align:left}</style></head>\n"
        f"<body><h1>coreos-lab box mirror</h1>\n<p>Base URL: <code>{e(base)}</code></p>\n{body}\n</body></html>\n"
    )
