"""The etcd v2 discovery protocol over HTTP (docs/field-notes.md §5), added to the server's aiohttp app by `setup`.

Routes: `GET /new?size=N` (discovery.etcd.io's API: the token URL as plain text) and the v2 keys API under
`/<token>`, which is the URL etcd gets as `--discovery`. Tokens are 32 lowercase hex characters, so these
routes never clash with the mirror's box names. Every answer carries `X-Etcd-Index`.

Long polls (`wait=true`) are asyncio futures registered per token and resolved by the write that matches
them, so a thousand waiting members cost a thousand small objects, not a thousand threads. A wait that
times out answers 200 with an empty body, which etcd's client takes as "poll again".

The database is never used on the event loop: reads go to a few threads, writes to one (so their
notifications reach the long polls in index order). A read that answers with a node and an index takes both from
one snapshot (`DiscoveryStore.consistently`). A database another process keeps locked answers
`503` with `Retry-After` once the busy timeout passes; the rest of the server (boxes, images) is not held up.
A mirror root where the state cannot be written (read-only) is served with discovery off: its routes answer
`503` saying so.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

from coreos_lab.discovery.store import (
    DEFAULT_MAX_AGE_SECONDS,
    DEFAULT_SIZE,
    MAX_SIZE,
    MIN_SIZE,
    DiscoveryStore,
    DiscoveryToken,
    EtcdError,
    Event,
    StateReadOnly,
    StateUnavailable,
    env_seconds,
    invalid_field,
    key_not_found,
    watch_matches,
)

WAIT_TIMEOUT_ENV = "LAB_DISCOVERY_WAIT_TIMEOUT"
MAX_AGE_ENV = "LAB_DISCOVERY_TOKEN_MAX_AGE"
# Under a minute keeps idle long polls alive through NAT and proxies; the client simply polls again.
DEFAULT_WAIT_TIMEOUT = 50.0
MAX_WAIT_TIMEOUT = 3600.0
MAX_TOKEN_AGE = 100 * 365 * 24 * 3600.0
# A write waits this long for another process's lock, then the client is told to come back (503, Retry-After).
BUSY_TIMEOUT = 1.0
RETRY_AFTER_SECONDS = 1
READ_THREADS = 4
# etcd's indexes are unsigned 64-bit; sqlite stores signed 64-bit: no index of ours is beyond this.
MAX_INDEX = 2**63 - 1
TOKEN_PATTERN = "{token:[0-9a-f]{32}}"
KEY_PATTERN = r"{rest:[\s\S]*}"  # any path below the token, also one with a decoded newline
_PREV_EXIST = {"false": False, "true": True}
# v2 write options etcd's discovery never sends; refused rather than silently ignored.
_UNSUPPORTED_WRITE_OPTIONS = ("ttl", "dir", "prevValue", "prevIndex", "refresh")
# A count in a query: ASCII digits only (`str.isdigit` and `int` also take '²' and other scripts' digits;
# docs/field-notes.md §8).
_COUNT_RE = re.compile(r"[0-9]{1,19}", re.ASCII)

log = logging.getLogger(__name__)
T = TypeVar("T")


def parse_count(raw: str, maximum: int) -> int | None:
    """A non-negative decimal integer up to `maximum` from a query value, or None."""
    if not _COUNT_RE.fullmatch(raw):
        return None
    value = int(raw)
    return value if value <= maximum else None


@dataclass(eq=False)
class _Watch:
    name: str
    recursive: bool
    since: int
    future: asyncio.Future[Event | None] = field(repr=False)


def _unavailable(error: StateUnavailable) -> web.Response:
    """503: a locked database passes (Retry-After), anything else is reported as it is."""
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if error.busy else {}
    text = "discovery is busy: " if error.busy else "discovery is unavailable: "
    return web.Response(status=503, text=f"{text}{error.message}\n", headers=headers)


Handler = Callable[["DiscoveryService", web.Request], Awaitable[web.StreamResponse]]


def _answers_unavailable(handler: Handler) -> Handler:
    """The handler, with a database that fails (locked, or worse) answered as 503 instead of a 500."""

    @functools.wraps(handler)
    async def handle(self: DiscoveryService, request: web.Request) -> web.StreamResponse:
        try:
            return await handler(self, request)
        except StateUnavailable as error:
            log.warning("%s %s: %s", request.method, request.rel_url, error.message)
            return _unavailable(error)

    return handle


class DiscoveryService:
    """The protocol handlers over one `DiscoveryStore`, plus the registry of pending long polls."""

    def __init__(self, store: DiscoveryStore, *, base_url: str | None, wait_timeout: float, max_token_age: float):
        self.store = store
        self.base_url = base_url.rstrip("/") if base_url else None
        self.wait_timeout = wait_timeout
        self.max_token_age = max_token_age
        self._watches: dict[str, list[_Watch]] = {}
        self._readers = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="discovery-read")
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="discovery-write")

    # the store, off the event loop

    async def _read(self, call: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._readers, call)

    async def _write(self, call: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._writer, call)

    async def close(self, _app: web.Application | None = None) -> None:
        """Let the store calls under way finish (each bounded by the busy timeout), then close the store."""

        def close() -> None:
            self._readers.shutdown(cancel_futures=True)
            self._writer.shutdown(cancel_futures=True)
            self.store.close()

        await asyncio.get_running_loop().run_in_executor(None, close)

    def _answer(self, work: Callable[[], tuple[int, Any]]) -> tuple[int, Any, int]:
        """In a store thread: `work`'s status and JSON document (or its etcd error's), and the index after it."""
        try:
            status, document = work()
        except EtcdError as error:
            index = self.store.current_index()
            return error.status, error.as_json(index), index
        return status, document, self.store.current_index()

    @staticmethod
    def _json(answer: tuple[int, Any, int]) -> web.Response:
        status, document, index = answer
        return web.json_response(document, status=status, headers={"X-Etcd-Index": str(index)})

    async def _error(self, error: EtcdError) -> web.Response:
        index = await self._read(self.store.current_index)
        return self._json((error.status, error.as_json(index), index))

    @property
    def pending_watches(self) -> int:
        """Long polls waiting right now. Safe to read from another thread: `list()` copies the values at once."""
        return sum(len(w) for w in list(self._watches.values()))

    def _notify(self, token: str, event: Event) -> None:
        watches = self._watches.get(token, [])
        for watch in list(watches):
            name = event.node.key.split("/", 2)[2]  # "/<token>/<name>"
            if event.index >= watch.since and watch_matches(name, watch.name, watch.recursive):
                if not watch.future.done():
                    watch.future.set_result(event)
                watches.remove(watch)

    async def wake_all(self, _app: web.Application | None = None) -> None:
        """Answer every pending long poll now (empty: the clients poll again) so a shutdown never waits."""
        for watches in self._watches.values():
            for watch in watches:
                if not watch.future.done():
                    watch.future.set_result(None)
        self._watches.clear()

    # handlers

    @_answers_unavailable
    async def handle_new(self, request: web.Request) -> web.StreamResponse:
        raw = request.query.get("size", str(DEFAULT_SIZE))
        size = parse_count(raw, MAX_SIZE)
        if size is None or size < MIN_SIZE:
            reason = f"invalid size {raw!r}: the number of etcd members, {MIN_SIZE}-{MAX_SIZE}\n"
            index = await self._read(self.store.current_index)
            return web.Response(status=400, text=reason, headers={"X-Etcd-Index": str(index)})
        if request.method == "HEAD":
            # HEAD has no side effects (RFC 9110 §9.3.2): it says what a GET would answer, and mints no token.
            index = await self._read(self.store.current_index)
            return web.Response(content_type="text/plain", headers={"X-Etcd-Index": str(index)})

        def create() -> DiscoveryToken:
            self.store.collect(self.max_token_age)
            return self.store.create_token(size)

        token = await self._write(create)
        base = self.base_url or f"{request.scheme}://{request.host}"
        return web.Response(text=f"{base}/{token.token}", headers={"X-Etcd-Index": str(token.created_index)})

    @_answers_unavailable
    async def handle_key(self, request: web.Request) -> web.StreamResponse:
        token = request.match_info["token"]
        # etcd's client keeps a trailing slash and may double one; the key is the clean path under the token.
        name = "/".join(part for part in request.match_info.get("rest", "").split("/") if part)
        if request.method in ("GET", "HEAD"):
            if request.query.get("wait") == "true":
                return await self._watch(request, token, name)
            # The node and the index from one snapshot: with a write committing between two separate reads, the
            # index would cover a member the listing lacks, and a client watching from index + 1 would never see it.
            answer = lambda: self._answer(lambda: (200, self._get(token, name)))  # noqa: E731
            return self._json(await self._read(lambda: self.store.consistently(answer)))
        if request.method == "PUT":
            return await self._put(request, token, name)
        index = await self._read(self.store.current_index)
        return web.Response(status=405, headers={"X-Etcd-Index": str(index), "Allow": "GET, HEAD, PUT"})

    def _get(self, token: str, name: str) -> dict[str, Any]:
        return {"action": "get", "node": self.store.get(token, name).as_json()}

    async def _put(self, request: web.Request, token: str, name: str) -> web.Response:
        form = await request.post()
        params = {**request.query, **{k: v for k, v in form.items() if isinstance(v, str)}}
        try:
            for option in _UNSUPPORTED_WRITE_OPTIONS:
                if params.get(option, "false") not in ("", "false"):
                    raise invalid_field(f"{option} is not supported by this discovery service")
            raw_prev_exist = params.get("prevExist")
            if raw_prev_exist is not None and raw_prev_exist not in _PREV_EXIST:
                raise invalid_field(f"prevExist={raw_prev_exist!r}: use true or false")
        except EtcdError as error:
            return await self._error(error)
        prev_exist = _PREV_EXIST.get(raw_prev_exist or "")
        written: list[Event] = []

        def put() -> tuple[int, Any]:
            event = self.store.put(token, name, params.get("value", ""), prev_exist=prev_exist)
            written.append(event)
            return 201 if event.prev_node is None else 200, event.as_json()

        answer = await self._write(lambda: self._answer(put))
        if written:
            # On the loop, in the order of the writes (one writer thread): a watch never sees a later write first.
            self._notify(token, written[0])
        return self._json(answer)

    async def _watch(self, request: web.Request, token: str, name: str) -> web.StreamResponse:
        raw = request.query.get("waitIndex", "0")
        wait_index = parse_count(raw, MAX_INDEX)
        if wait_index is None:
            return await self._error(invalid_field(f"waitIndex={raw!r}: a non-negative integer below 2^63"))
        recursive = request.query.get("recursive") == "true"
        known, index = await self._read(
            lambda: self.store.consistently(lambda: (self.store.token(token), self.store.current_index()))
        )
        if known is None:
            return await self._error(key_not_found(f"/{token}/{name}" if name else f"/{token}"))
        headers = {"X-Etcd-Index": str(index)}
        # Without waitIndex a watch waits for the next write, as in etcd.
        since = wait_index or index + 1
        # Registered before the history is read: a write that commits meanwhile is either in the history or
        # notified to this watch, never missed.
        watch = _Watch(name, recursive, since, asyncio.get_running_loop().create_future())
        self._watches.setdefault(token, []).append(watch)
        try:
            event = await self._read(
                lambda: self.store.first_event_since(token, name, recursive=recursive, since=since)
            )
            if event is None:
                # `lab --debug mirror serve` shows each member's poll for peers as it starts waiting.
                log.debug("long poll on /%s/%s waits for index %d", token, name, since)
                try:
                    event = await asyncio.wait_for(watch.future, self.wait_timeout)
                except TimeoutError:
                    event = None
        finally:
            pending = self._watches.get(token, [])
            if watch in pending:
                pending.remove(watch)
            if not pending:
                self._watches.pop(token, None)
        if event is None:
            return web.Response(status=200, headers=headers)
        return web.json_response(event.as_json(), headers=headers)


# `request.app[DISCOVERY_KEY]` reaches the service (tests, status pages).
DISCOVERY_KEY = web.AppKey("discovery", DiscoveryService)
# Why discovery is off, when it is (`lab mirror serve` says so).
DISCOVERY_OFF_KEY = web.AppKey("discovery off", str)


def setup(
    app: web.Application,
    state_dir: Path,
    *,
    base_url: str | None = None,
    wait_timeout: float | None = None,
    max_token_age: float | None = None,
) -> DiscoveryService | None:
    """Add the discovery routes to `app`, with state in `state_dir`; collect tokens older than the max age.

    `base_url` fixes the token URLs `/new` answers (else they follow the request's Host). The wait timeout
    and the token age default to $LAB_DISCOVERY_WAIT_TIMEOUT and $LAB_DISCOVERY_TOKEN_MAX_AGE (seconds).
    Where the state cannot be written (a read-only mirror root), discovery is off: its routes answer 503 saying
    why, `app[DISCOVERY_OFF_KEY]` holds the reason, and None is returned.
    """
    wait_timeout = wait_timeout or env_seconds(WAIT_TIMEOUT_ENV, DEFAULT_WAIT_TIMEOUT, MAX_WAIT_TIMEOUT)
    max_token_age = max_token_age or env_seconds(MAX_AGE_ENV, DEFAULT_MAX_AGE_SECONDS, MAX_TOKEN_AGE)
    try:
        store = DiscoveryStore(state_dir, busy_timeout=BUSY_TIMEOUT)
    except StateReadOnly as exc:
        _setup_off(app, f"discovery is off: {exc.message}; boxes and images are served")
        return None
    service = DiscoveryService(store, base_url=base_url, wait_timeout=wait_timeout, max_token_age=max_token_age)
    try:
        store.collect(service.max_token_age)
    except StateUnavailable as exc:  # a locked database at start: the next /new collects
        log.warning("old discovery tokens not collected: %s", exc.message)
    app[DISCOVERY_KEY] = service
    app.router.add_get("/new", service.handle_new)  # and HEAD
    app.router.add_route("*", f"/{TOKEN_PATTERN}", service.handle_key)
    app.router.add_route("*", f"/{TOKEN_PATTERN}/{KEY_PATTERN}", service.handle_key)
    app.on_shutdown.append(service.wake_all)
    app.on_cleanup.append(service.close)
    return service


def _setup_off(app: web.Application, reason: str) -> None:
    async def off(_request: web.Request) -> web.Response:
        return web.Response(status=503, text=reason + "\n")

    app[DISCOVERY_OFF_KEY] = reason
    for path in ("/new", f"/{TOKEN_PATTERN}", f"/{TOKEN_PATTERN}/{KEY_PATTERN}"):
        app.router.add_route("*", path, off)
