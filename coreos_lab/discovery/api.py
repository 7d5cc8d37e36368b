"""The etcd v2 discovery protocol over HTTP (docs/field-notes.md §5), added to the server's aiohttp app by `setup`.

Routes: `GET /new?size=N` (discovery.etcd.io's API: the token URL as plain text) and the v2 keys API under
`/<token>`, which is the URL etcd gets as `--discovery`. Tokens are 32 lowercase hex characters, so these
routes never clash with the mirror's box names. Every answer carries `X-Etcd-Index`.

Long polls (`wait=true`) are asyncio futures registered per token and resolved by the write that matches
them, so a thousand waiting members cost a thousand small objects, not a thousand threads. A wait that
times out answers 200 with an empty body, which etcd's client takes as "poll again".
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from coreos_lab.discovery.store import (
    DEFAULT_MAX_AGE_SECONDS,
    DEFAULT_SIZE,
    MAX_SIZE,
    MIN_SIZE,
    DiscoveryStore,
    EtcdError,
    Event,
    env_seconds,
    invalid_field,
    key_not_found,
    watch_matches,
)

WAIT_TIMEOUT_ENV = "LAB_DISCOVERY_WAIT_TIMEOUT"
MAX_AGE_ENV = "LAB_DISCOVERY_TOKEN_MAX_AGE"
# Under a minute keeps idle long polls alive through NAT and proxies; the client simply polls again.
DEFAULT_WAIT_TIMEOUT = 50.0
TOKEN_PATTERN = "{token:[0-9a-f]{32}}"
_PREV_EXIST = {"false": False, "true": True}
# v2 write options etcd's discovery never sends; refused rather than silently ignored.
_UNSUPPORTED_WRITE_OPTIONS = ("ttl", "dir", "prevValue", "prevIndex", "refresh")

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Watch:
    name: str
    recursive: bool
    since: int
    future: asyncio.Future[Event | None] = field(repr=False)


class DiscoveryService:
    """The protocol handlers over one `DiscoveryStore`, plus the registry of pending long polls."""

    def __init__(self, store: DiscoveryStore, *, base_url: str | None, wait_timeout: float, max_token_age: float):
        self.store = store
        self.base_url = base_url.rstrip("/") if base_url else None
        self.wait_timeout = wait_timeout
        self.max_token_age = max_token_age
        self._watches: dict[str, list[_Watch]] = {}

    # helpers

    def _headers(self) -> dict[str, str]:
        return {"X-Etcd-Index": str(self.store.current_index())}

    def _json(self, document: object, status: int = 200) -> web.Response:
        return web.json_response(document, status=status, headers=self._headers())

    def _error(self, error: EtcdError) -> web.Response:
        return self._json(error.as_json(self.store.current_index()), error.status)

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

    async def handle_new(self, request: web.Request) -> web.Response:
        raw = request.query.get("size", str(DEFAULT_SIZE))
        size = int(raw) if raw.isdigit() else -1
        if not MIN_SIZE <= size <= MAX_SIZE:
            reason = f"invalid size {raw!r}: the number of etcd members, {MIN_SIZE}-{MAX_SIZE}\n"
            return web.Response(status=400, text=reason, headers=self._headers())
        self.store.collect(self.max_token_age)
        token = self.store.create_token(size)
        base = self.base_url or f"{request.scheme}://{request.host}"
        return web.Response(text=f"{base}/{token.token}", headers=self._headers())

    async def handle_key(self, request: web.Request) -> web.StreamResponse:
        token = request.match_info["token"]
        # etcd's client keeps a trailing slash and may double one; the key is the clean path under the token.
        name = "/".join(part for part in request.match_info.get("rest", "").split("/") if part)
        try:
            if request.method in ("GET", "HEAD"):
                if request.query.get("wait") == "true":
                    return await self._watch(request, token, name)
                node = self.store.get(token, name)
                # Read after the node: only this process writes member keys, so the index covers them all.
                return self._json({"action": "get", "node": node.as_json()})
            if request.method == "PUT":
                return await self._put(request, token, name)
        except EtcdError as error:
            return self._error(error)
        return web.Response(status=405, headers={**self._headers(), "Allow": "GET, HEAD, PUT"})

    async def _put(self, request: web.Request, token: str, name: str) -> web.Response:
        form = await request.post()
        params = {**request.query, **{k: v for k, v in form.items() if isinstance(v, str)}}
        for option in _UNSUPPORTED_WRITE_OPTIONS:
            if params.get(option, "false") not in ("", "false"):
                raise invalid_field(f"{option} is not supported by this discovery service")
        raw_prev_exist = params.get("prevExist")
        if raw_prev_exist is not None and raw_prev_exist not in _PREV_EXIST:
            raise invalid_field(f"prevExist={raw_prev_exist!r}: use true or false")
        prev_exist = _PREV_EXIST.get(raw_prev_exist or "")
        event = self.store.put(token, name, params.get("value", ""), prev_exist=prev_exist)
        self._notify(token, event)
        return self._json(event.as_json(), 201 if event.prev_node is None else 200)

    async def _watch(self, request: web.Request, token: str, name: str) -> web.StreamResponse:
        if self.store.token(token) is None:
            raise key_not_found(f"/{token}/{name}" if name else f"/{token}")
        raw = request.query.get("waitIndex", "0")
        if not raw.isdigit():
            raise invalid_field(f"waitIndex={raw!r}: a non-negative integer")
        recursive = request.query.get("recursive") == "true"
        headers = self._headers()
        # Without waitIndex a watch waits for the next write, as in etcd.
        since = int(raw) or self.store.current_index() + 1
        event = self.store.first_event_since(token, name, recursive=recursive, since=since)
        if event is None:
            # No await between the history check and registering: no write can slip in between.
            watch = _Watch(name, recursive, since, asyncio.get_running_loop().create_future())
            self._watches.setdefault(token, []).append(watch)
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


def setup(
    app: web.Application,
    state_dir: Path,
    *,
    base_url: str | None = None,
    wait_timeout: float | None = None,
    max_token_age: float | None = None,
) -> DiscoveryService:
    """Add the discovery routes to `app`, with state in `state_dir`; collect tokens older than the max age.

    `base_url` fixes the token URLs `/new` answers (else they follow the request's Host). The wait timeout
    and the token age default to $LAB_DISCOVERY_WAIT_TIMEOUT and $LAB_DISCOVERY_TOKEN_MAX_AGE (seconds).
    """
    store = DiscoveryStore(state_dir)
    service = DiscoveryService(
        store,
        base_url=base_url,
        wait_timeout=wait_timeout or env_seconds(WAIT_TIMEOUT_ENV, DEFAULT_WAIT_TIMEOUT),
        max_token_age=max_token_age or env_seconds(MAX_AGE_ENV, DEFAULT_MAX_AGE_SECONDS),
    )
    store.collect(service.max_token_age)
    app[DISCOVERY_KEY] = service
    app.router.add_get("/new", service.handle_new)
    app.router.add_route("*", f"/{TOKEN_PATTERN}", service.handle_key)
    app.router.add_route("*", f"/{TOKEN_PATTERN}/{{rest:.*}}", service.handle_key)
    app.on_shutdown.append(service.wake_all)

    async def close_store(_app: web.Application) -> None:
        store.close()

    app.on_cleanup.append(close_store)
    return service
