"""The one server process: box mirror + image registry + etcd discovery, on aiohttp.

`build_app` assembles the routes; `serve_forever` runs them in the foreground (`lab mirror serve`);
`EmbeddedServer` runs them on a background thread for the duration of a command that needs them
(`lab up`, `lab discovery new` with no server running) and for tests.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coreos_lab.discovery.store import TOKEN_RE
from coreos_lab.errors import BadInput, LabError, Timeout
from coreos_lab.paths import DEFAULT_HOST, DEFAULT_PORT, discovery_dir

if TYPE_CHECKING:
    from aiohttp import web

# What a request in flight gets to finish once the server is told to stop; then its connection is cut. aiohttp's
# own default (60 s to finish, 60 s more once cancelled) let one client that stopped reading hold a stop for 2 min
# (docs/field-notes.md §8).
SHUTDOWN_GRACE = 2.0


def build_app(
    mirror_root: Path, *, base_url: str | None = None, live_view: bool = False, token: str | None = None
) -> web.Application:
    """The aiohttp application serving the mirror at `mirror_root` (boxes, and images at /v2/) and discovery
    state beside it.

    `base_url` fixes the absolute URLs written into box metadata; without it they follow the request's Host.
    With `token`, every request for the box mirror must carry it (`token_middleware`).
    """
    from aiohttp import web

    from coreos_lab.discovery import api as discovery_api
    from coreos_lab.mirror import http as mirror_http
    from coreos_lab.mirror.images import http as registry_http

    app = web.Application(middlewares=[token_middleware(token)] if token else [])
    # Discovery and the registry first: their routes match only `/new`, 32-hex tokens and `/v2`, `/v2/…`; the
    # box mirror takes every other path (a box so named would be hidden: `name_taken`).
    discovery_api.setup(app, discovery_dir(mirror_root), base_url=base_url)
    tracker = mirror_http.transfer_tracker(app, live_view=live_view)
    registry_http.setup(app, mirror_root, tracker=tracker)
    mirror_http.setup(app, mirror_root, base_url=base_url, tracker=tracker)
    return app


def name_taken(name: str) -> str | None:
    """Why no box called `name` can be served, or None: a route `build_app` adds before the mirror's takes its
    metadata URL (discovery's `/new` and `/<token>`, the registry's `/v2`). Importing such a name should be refused.
    """
    if name == "new":
        return "/new is the discovery API"
    if name == "v2":
        return "/v2 is the image registry"
    if TOKEN_RE.match(name):
        return "32 lowercase hex characters are a discovery token URL"
    return None


TOKEN_REALM = 'Bearer realm="lab mirror"'


def read_token_file(path: Path) -> str:
    """The token in `path` (surrounding whitespace dropped): a clear error if it is missing or empty."""
    try:
        token = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"--token-file {path}: cannot read it: {getattr(exc, 'strerror', None) or exc}") from exc
    if not token or any(c.isspace() or not c.isprintable() for c in token):
        raise BadInput(
            f"--token-file {path}: the token must be one word of printable characters",
            hint="write a fresh one: python3 -c 'import secrets; print(secrets.token_urlsafe(32))' > FILE",
        )
    return token


def open_to_guests(path: str) -> bool:
    """Routes the guests themselves call, which cannot carry the mirror token: discovery (`/new`, and
    `/<token>/…`, whose 128-bit token is its own secret) and the image registry (`/v2`, `/v2/…`) that Docker
    in a guest pulls from."""
    return name_taken(path.lstrip("/").split("/", 1)[0]) is not None


def presented_tokens(headers: Any, query: Any) -> list[str]:
    """The tokens a request carries, in the ways Vagrant sends one to its server URL (VAGRANT_SERVER_URL,
    token from VAGRANT_CLOUD_TOKEN; plugins/commands/cloud/auth/middleware/ in Vagrant 2.3 and 2.4): the header
    `Authorization: Bearer T`, also what `config.vm.box_download_options` can add, or `?access_token=T` when
    VAGRANT_SERVER_ACCESS_TOKEN_BY_URL is set."""
    found = list(query.getall("access_token", []))
    scheme, _, credentials = headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        found.append(credentials.strip())
    return found


def token_middleware(token: str) -> Any:
    """An aiohttp middleware answering 401 to any request for the box mirror without `token`.

    Tokens are compared as SHA-256 digests with `hmac.compare_digest`: equal lengths, constant time, so the time
    taken tells nothing about the token's length or how much of a guess was right.
    """
    from aiohttp import web

    expected = hashlib.sha256(token.encode()).digest()

    @web.middleware
    async def require_token(request: web.Request, handler: Any) -> web.StreamResponse:
        if open_to_guests(request.path):
            return await handler(request)
        matches = [
            hmac.compare_digest(hashlib.sha256(t.encode()).digest(), expected)
            for t in presented_tokens(request.headers, request.query)
        ]
        if any(matches):
            return await handler(request)
        raise web.HTTPUnauthorized(
            text="401: this mirror needs its token (Authorization: Bearer TOKEN, or ?access_token=TOKEN)\n",
            headers={"WWW-Authenticate": TOKEN_REALM},
        )

    return require_token


def serve_forever(
    mirror_root: Path,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    base_url: str | None = None,
    live_view: bool = False,
    token: str | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve in the foreground, one access-log line per request on stderr, until SIGINT or SIGTERM.

    `on_ready` gets the URL actually listened on (port 0 picks a free one) once connections are accepted.
    """
    asyncio.run(_serve(mirror_root, host, port, base_url, live_view, token, on_ready))


async def _serve(
    mirror_root: Path,
    host: str,
    port: int,
    base_url: str | None,
    live_view: bool,
    token: str | None,
    on_ready: Callable[[str], None] | None,
) -> None:
    import logging
    import signal

    from aiohttp import web

    from coreos_lab import console
    from coreos_lab.access_log import AccessLog
    from coreos_lab.discovery.api import DISCOVERY_OFF_KEY

    # Signal handlers first: a stop request that arrives while starting up must not be lost.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    app = build_app(mirror_root, base_url=base_url, live_view=live_view, token=token)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log_class=AccessLog,
        access_log=logging.getLogger(__name__),
        shutdown_timeout=SHUTDOWN_GRACE,
    )
    await runner.setup()
    try:
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            raise LabError(
                f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                hint="choose another address with --host/--port (is another server running there?)",
            ) from exc
        if on_ready is not None:
            bound_port = runner.addresses[0][1]
            on_ready(f"http://{f'[{host}]' if ':' in host else host}:{bound_port}")
        if DISCOVERY_OFF_KEY in app:
            console.warn(app[DISCOVERY_OFF_KEY])
        await stop.wait()
        stop.clear()  # a second SIGINT/SIGTERM cuts the requests in flight at once
    finally:
        await stop_runner(runner, cut_now=stop)


async def stop_runner(runner: web.AppRunner, *, cut_now: asyncio.Event | None = None) -> None:
    """Stop listening and end every connection. Long polls are answered at once; file transfers in flight get
    `SHUTDOWN_GRACE` seconds (or until `cut_now` is set) and are then cut; any other request is cancelled by
    aiohttp after its `shutdown_timeout` (the same grace)."""
    from coreos_lab.mirror.http import cut_transfers

    app = runner.app
    cleanup = asyncio.ensure_future(runner.cleanup())
    waits: set[asyncio.Future[Any]] = {cleanup}
    if cut_now is not None:
        waits.add(asyncio.ensure_future(cut_now.wait()))
    await asyncio.wait(waits, timeout=SHUTDOWN_GRACE, return_when=asyncio.FIRST_COMPLETED)
    for pending in waits - {cleanup}:
        pending.cancel()
    if not cleanup.done():
        cut_transfers(app)
    await cleanup


_LINUX_IP_FREEBIND = 15  # <linux/in.h>; the socket module names it only from Python 3.12


def freebind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on `host:port`, even before `host` exists on this machine (IP_FREEBIND).

    libvirt's management bridge, whose gateway guests use to reach the host, only appears once Vagrant
    creates the network, but the server must listen there before the first guest boots.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if sys.platform == "linux":
            sock.setsockopt(socket.IPPROTO_IP, getattr(socket, "IP_FREEBIND", _LINUX_IP_FREEBIND), 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class EmbeddedServer:
    """Runs the server on a background thread: `with EmbeddedServer(root, port=0) as srv: srv.url`.

    Port 0 picks a free port; `url` is the address it actually listens on.
    """

    def __init__(
        self,
        mirror_root: Path,
        *,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        base_url: str | None = None,
        guest_hosts: Sequence[str] = (),
    ):
        self.mirror_root = Path(mirror_root)
        self.host = host
        self.port = port
        self.base_url = base_url
        # Further addresses (same port) where guests reach this host, e.g. libvirt's management gateway.
        self.guest_hosts = tuple(h for h in guest_hosts if h and h != host)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def app(self) -> web.Application:
        """The running application (its services are reachable by their AppKeys)."""
        if self._runner is None:
            raise RuntimeError("server not started")
        return self._runner.app

    def start(self) -> EmbeddedServer:
        self._thread = threading.Thread(target=self._run, name="lab-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout=30):
            raise Timeout(f"the embedded server did not start listening on {self.host}:{self.port} within 30 s")
        if self._error is not None:
            raise self._error
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            from aiohttp import web

            app = build_app(self.mirror_root, base_url=self.base_url)
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_GRACE)
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, self.host, self.port)
            loop.run_until_complete(site.start())
            if self.port == 0:
                self.port = runner.addresses[0][1]
            for guest_host in self.guest_hosts:
                loop.run_until_complete(web.SockSite(runner, freebind_socket(guest_host, self.port)).start())
            self._runner = runner
        except BaseException as exc:  # reported to the starting thread
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        loop.run_forever()
        loop.run_until_complete(stop_runner(runner))
        loop.close()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        """Stop serving: file transfers still running after the shutdown grace are cut."""
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)

    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
