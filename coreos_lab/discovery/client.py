"""The token client: get a fresh discovery token and inspect one.

Over HTTP it speaks discovery.etcd.io's `/new` and the v2 keys API, so it works against our server, the
public service (only when asked for by name: it is deprecated and unreachable behind firewalls) or any etcd
used as a discovery backend. With no server running it reads and writes the on-disk `DiscoveryStore` that
`lab mirror serve` will serve, so commands work on their own.
"""

from __future__ import annotations

import posixpath
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from coreos_lab.discovery.store import DB_NAME, TOKEN_RE, DiscoveryStore, check_size
from coreos_lab.errors import BadInput, LabError, Timeout
from coreos_lab.paths import default_base_url, discovery_dir
from coreos_lab.urls import is_http_url

PUBLIC_SERVER = "https://discovery.etcd.io"
DEFAULT_TIMEOUT = 10.0
_LOCAL_HINT = "start the server with `lab mirror serve`, or pass --server URL"
_PUBLIC_HINT = "discovery.etcd.io is deprecated and often unreachable; omit --server to use the local service"


class DiscoveryUnreachable(LabError):
    """No answer from a discovery URL (refused, reset, DNS); the message names the URL."""


@dataclass(frozen=True)
class RegisteredMember:
    """A registered etcd member: its id (the key), name and peer URLs (the value `name=url[,name=url]`)."""

    id: str
    name: str
    peer_urls: tuple[str, ...]
    created_index: int

    @classmethod
    def from_node(cls, key: str, value: str, created_index: int) -> RegisteredMember:
        pairs = [p.partition("=") for p in value.split(",") if p]
        name = pairs[0][0] if pairs else ""
        return cls(posixpath.basename(key), name, tuple(url for _, _, url in pairs), created_index)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "peer_urls": list(self.peer_urls),
            "created_index": self.created_index,
        }


@dataclass(frozen=True)
class TokenInfo:
    url: str
    size: int
    members: tuple[RegisteredMember, ...]
    source: str  # "server": asked over HTTP; "store": read from the on-disk store (no server running)

    @property
    def token(self) -> str:
        return token_of(self.url)

    @property
    def complete(self) -> bool:
        return len(self.members) >= self.size

    def as_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "token": self.token,
            "size": self.size,
            "registered": len(self.members),
            "complete": self.complete,
            "members": [m.as_dict() for m in self.members],
            "source": self.source,
        }


@dataclass(frozen=True)
class NewToken:
    url: str
    size: int
    source: str  # "server", "public" or "store"

    @property
    def token(self) -> str:
        return token_of(self.url)

    def as_dict(self) -> dict[str, Any]:
        return {"url": self.url, "token": self.token, "size": self.size, "source": self.source}


def server_url(server: str | None) -> str:
    """`public` → discovery.etcd.io; None → the default local server address; else a checked http(s) URL."""
    if server is None:
        return default_base_url()
    if server == "public":
        return PUBLIC_SERVER
    if not is_http_url(server):
        raise BadInput(f"invalid discovery server {server!r}: an http(s) URL such as http://127.0.0.1:8080, or public")
    return server.rstrip("/")


def token_of(token_url: str) -> str:
    """The token of a token URL: its last path segment (`…/<token>`, also `…/v2/keys/<token>`)."""
    token = posixpath.basename(urlsplit(token_url).path.rstrip("/")) if is_http_url(token_url) else ""
    if not token:
        raise BadInput(f"invalid discovery token URL {token_url!r}: expected http(s)://HOST[:PORT]/TOKEN")
    return token


def _get(url: str, timeout: float) -> Any:
    import requests

    hint = _PUBLIC_HINT if url.startswith(PUBLIC_SERVER) else _LOCAL_HINT
    session = requests.Session()
    # A proxy from the environment must not capture the local server (no_proxy rarely lists loopback).
    session.trust_env = urlsplit(url).hostname not in ("127.0.0.1", "localhost", "::1")
    try:
        with session:
            return session.get(url, timeout=timeout, headers={"Accept-Encoding": "identity"})
    except requests.Timeout as exc:
        raise Timeout(f"discovery service at {url} did not answer within {timeout:g}s", hint=hint) from exc
    except requests.RequestException as exc:
        reason = _root_cause(exc)
        raise DiscoveryUnreachable(f"discovery service at {url} is unreachable ({reason})", hint=hint) from exc


def _root_cause(exc: BaseException) -> str:
    """The innermost OS-level reason (`connection refused`, a DNS failure) instead of urllib3's long repr."""
    seen: BaseException | None = exc
    cause: BaseException = exc
    while seen is not None:
        cause = seen
        seen = seen.__cause__ or seen.__context__
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror.lower()
    # urllib3 keeps the socket error inside its own exception's args rather than the cause chain.
    text = str(cause)
    for marker in ("Connection refused", "Name or service not known", "No route to host", "Connection reset"):
        if marker in text:
            return marker.lower()
    return type(exc).__name__


def new_token(server_url: str, size: int = 3, timeout: float = DEFAULT_TIMEOUT) -> str:
    """A fresh token URL from the server's `/new?size=N` (discovery.etcd.io's API)."""
    check_size(size)
    url = f"{server_url.rstrip('/')}/new?size={size}"
    deadline = time.monotonic() + timeout
    response = _get(url, timeout)
    # A busy server (its database locked by another process) says when to come back: within the timeout, do.
    while (pause := _retry_after(response)) is not None and time.monotonic() + pause < deadline:
        time.sleep(pause)
        response = _get(url, timeout)
    text = response.text.strip()
    if response.status_code != 200:
        raise LabError(f"discovery service at {url} answered {response.status_code}: {text[:200]}")
    try:
        token_of(text)
    except BadInput as exc:
        raise LabError(
            f"discovery service at {url} answered something that is not a token URL: {text[:200]!r}"
        ) from exc
    return text


def _retry_after(response: Any) -> float | None:
    """The seconds a 503's `Retry-After` asks for (the delay form, up to a minute), else None."""
    value = response.headers.get("Retry-After", "") if response.status_code == 503 else ""
    return float(value) if value.isascii() and value.isdecimal() and int(value) <= 60 else None


def _keys_json(url: str, response: Any) -> dict[str, Any]:
    try:
        document = response.json()
    except ValueError:
        document = None
    if not isinstance(document, dict):
        raise LabError(f"{url} is not an etcd discovery service (answered {response.status_code}, not v2 JSON)")
    return document


def show(token_url: str, timeout: float = DEFAULT_TIMEOUT) -> TokenInfo:
    """Size and registered members of a token, over HTTP (the v2 keys API under the token URL)."""
    base = token_url.rstrip("/")
    token_of(base)
    size_url = f"{base}/_config/size"
    response = _get(size_url, timeout)
    document = _keys_json(size_url, response)
    if response.status_code == 404:
        raise BadInput(f"no discovery token at {base} (the server answered 404: {document.get('message')})")
    if response.status_code != 200:
        raise LabError(f"{size_url} answered {response.status_code}: {document.get('message')}")
    try:
        size = int(document["node"]["value"])
    except (KeyError, TypeError, ValueError) as exc:
        raise LabError(f"{size_url} holds no valid size: {document}") from exc
    response = _get(base, timeout)
    document = _keys_json(base, response)
    if response.status_code != 200:
        raise LabError(f"{base} answered {response.status_code}: {document.get('message')}")
    nodes = document.get("node", {}).get("nodes", [])
    members = [
        RegisteredMember.from_node(n["key"], n.get("value", ""), int(n.get("createdIndex", 0)))
        for n in nodes
        if posixpath.basename(n.get("key", "")) != "_config" and not n.get("dir")
    ]
    members.sort(key=lambda m: m.created_index)
    return TokenInfo(base, size, tuple(members), "server")


def create_token(mirror_root: Path, size: int) -> str:
    """A fresh token created directly in the on-disk store beside `mirror_root`; the caller builds the URL."""
    store = DiscoveryStore(discovery_dir(mirror_root))
    try:
        return store.create_token(size).token
    finally:
        store.close()


def show_from_store(mirror_root: Path, token_url: str) -> TokenInfo | None:
    """The token's state read from the on-disk store, or None when the store does not hold it."""
    token = token_of(token_url)
    state_dir = discovery_dir(mirror_root)
    if not TOKEN_RE.fullmatch(token) or not (state_dir / DB_NAME).is_file():
        return None
    store = DiscoveryStore(state_dir)
    try:
        found = store.token(token)
        if found is None:
            return None
        members = tuple(RegisteredMember.from_node(n.key, n.value or "", n.created_index) for n in store.members(token))
        return TokenInfo(token_url.rstrip("/"), found.size, members, "store")
    finally:
        store.close()


def discovery_server_running(server_url: str, timeout: float = 1.0) -> bool:
    """Whether a discovery service answers at `server_url`: an unknown token must give etcd's 404/100."""
    try:
        response = _get(f"{server_url.rstrip('/')}/{'0' * 32}/_config/size", timeout)
    except LabError:
        return False
    try:
        return response.status_code == 404 and response.json().get("errorCode") == 100
    except ValueError:
        return False


def allocate(size: int, *, server: str | None, mirror_root: Path, timeout: float = DEFAULT_TIMEOUT) -> NewToken:
    """A fresh token for a cluster of `size` etcd members.

    `server` is a URL or `public`; without one the local server at the default address is asked, and when
    none is running the token is created in the on-disk store, under the URL that server will serve it at.
    """
    check_size(size)
    if server is not None:
        return NewToken(
            new_token(server_url(server), size, timeout), size, "public" if server == "public" else "server"
        )
    base = server_url(None)
    if discovery_server_running(base):
        return NewToken(new_token(base, size, timeout), size, "server")
    return NewToken(f"{base}/{create_token(mirror_root, size)}", size, "store")


def inspect(token_url: str, *, mirror_root: Path | None = None, timeout: float = DEFAULT_TIMEOUT) -> TokenInfo:
    """`show` over HTTP; when nothing answers and the on-disk store holds the token, its state from there."""
    try:
        return show(token_url, timeout)
    except DiscoveryUnreachable:
        stored = show_from_store(mirror_root, token_url) if mirror_root is not None else None
        if stored is None:
            raise
        return stored
