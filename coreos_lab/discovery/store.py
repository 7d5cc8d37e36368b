"""The discovery store: tokens and the keys under them, with etcd v2 index semantics, in one sqlite database.

Like the etcd cluster behind discovery.etcd.io, the store has one global index that every write increments;
each node carries the `createdIndex`/`modifiedIndex` of the writes that made it, and every write is kept as an
event so a watch with `waitIndex=N` can be answered from history (etcd's own discovery client relies on that
right after it registers). sqlite gives atomic, durable commits and lets the server and a CLI process share the
file. Key names are relative to the token: `_config/size` or a member id.
"""

from __future__ import annotations

import errno
import functools
import math
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from coreos_lab.errors import BadInput, LabError

TOKEN_RE = re.compile(r"^[0-9a-f]{32}$")
# Member keys are what etcd registers: its member id in hex. Allow a little more, never a path.
MEMBER_KEY_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]{0,63}$")
MIN_SIZE, MAX_SIZE, DEFAULT_SIZE = 1, 99, 3
DEFAULT_MAX_AGE_SECONDS = 30 * 24 * 3600
CONFIG_DIR = "_config"
SIZE_KEY = "_config/size"
DB_NAME = "discovery.sqlite3"
# How long a write waits for another process's lock on the database before it gives up (sqlite's busy timeout).
DEFAULT_BUSY_TIMEOUT = 10.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (
    token TEXT PRIMARY KEY, size INTEGER NOT NULL, created_at REAL NOT NULL, created_index INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (
    token TEXT NOT NULL, name TEXT NOT NULL, value TEXT NOT NULL,
    created_index INTEGER NOT NULL, modified_index INTEGER NOT NULL, PRIMARY KEY (token, name));
CREATE TABLE IF NOT EXISTS events (
    idx INTEGER PRIMARY KEY, token TEXT NOT NULL, action TEXT NOT NULL, name TEXT NOT NULL, value TEXT NOT NULL,
    created_index INTEGER NOT NULL, prev_value TEXT, prev_created INTEGER, prev_modified INTEGER);
CREATE INDEX IF NOT EXISTS events_by_token ON events (token, idx);
INSERT OR IGNORE INTO meta (name, value) VALUES ('index', 0);
"""


class StateReadOnly(BadInput):
    """The discovery state cannot be created or written here (a read-only or foreign mirror root)."""


class StateUnavailable(LabError):
    """The discovery database failed a call; `busy` when another process held its lock past the busy timeout,
    which passes: try again."""

    def __init__(self, message: str, *, busy: bool):
        super().__init__(message, hint="try again in a moment" if busy else None)
        self.busy = busy


P = ParamSpec("P")
R = TypeVar("R")


def _guarded(method: Callable[Concatenate[DiscoveryStore, P], R]) -> Callable[Concatenate[DiscoveryStore, P], R]:
    """sqlite's errors as `StateUnavailable`, naming the database (a locked one says so)."""

    @functools.wraps(method)
    def call(self: DiscoveryStore, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as exc:
            code = getattr(exc, "sqlite_errorcode", 0) & 0xFF  # the primary result code
            busy = code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
            what = "is locked by another process" if busy else f"failed: {exc}"
            raise StateUnavailable(f"the discovery state at {self.path} {what}", busy=busy) from exc

    return call


def check_size(size: int, field: str = "size") -> int:
    if isinstance(size, bool) or not isinstance(size, int) or not MIN_SIZE <= size <= MAX_SIZE:
        raise BadInput(f"invalid discovery {field} {size!r}: the number of etcd members, {MIN_SIZE}–{MAX_SIZE}")
    return size


def new_token() -> str:
    """32 lowercase hex characters from the OS CSPRNG, like discovery.etcd.io's tokens."""
    return secrets.token_hex(16)


@dataclass(frozen=True)
class KeyNode:
    """A v2 keys-API node. `key` is the full etcd key (`/<token>/<name>`); a directory has `nodes`."""

    key: str
    value: str | None
    created_index: int
    modified_index: int
    nodes: tuple[KeyNode, ...] | None = None

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]

    def as_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"key": self.key}
        if self.nodes is not None:
            doc["dir"] = True
            if self.nodes:
                doc["nodes"] = [n.as_json() for n in self.nodes]
        else:
            doc["value"] = self.value
        doc["modifiedIndex"] = self.modified_index
        doc["createdIndex"] = self.created_index
        return doc


@dataclass(frozen=True)
class Event:
    """One write, as a v2 response body: `{"action":…,"node":…[,"prevNode":…]}`; `index` is its etcd index."""

    index: int
    action: str
    node: KeyNode
    prev_node: KeyNode | None = None

    def as_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"action": self.action, "node": self.node.as_json()}
        if self.prev_node is not None:
            doc["prevNode"] = self.prev_node.as_json()
        return doc


class EtcdError(Exception):
    """A v2 keys-API error: etcd's error code, HTTP status and message; `cause` is the key concerned."""

    def __init__(self, code: int, status: int, message: str, cause: str):
        super().__init__(f"{message}: {cause}")
        self.code = code
        self.status = status
        self.message = message
        self.cause = cause

    def as_json(self, index: int) -> dict[str, Any]:
        return {"errorCode": self.code, "message": self.message, "cause": self.cause, "index": index}


# etcd's v2 error codes (etcd error package): the discovery client acts on 100 and 105.
def key_not_found(key: str) -> EtcdError:
    return EtcdError(100, 404, "Key not found", key)


def node_exists(key: str) -> EtcdError:
    return EtcdError(105, 412, "Key already exists", key)


def not_a_file(key: str) -> EtcdError:
    return EtcdError(102, 403, "Not a file", key)


def read_only(key: str) -> EtcdError:
    return EtcdError(107, 403, "Root is read only", key)


def invalid_field(cause: str) -> EtcdError:
    return EtcdError(209, 400, "Invalid field", cause)


@dataclass(frozen=True)
class DiscoveryToken:
    """A token as stored: its size (the etcd members that will register) and when it was made."""

    token: str
    size: int
    created_at: float
    created_index: int


def watch_matches(event_name: str, watched: str, recursive: bool) -> bool:
    """Whether a write to `event_name` wakes a watch on `watched` (names relative to the token)."""
    if event_name == watched:
        return True
    return recursive and (watched == "" or event_name.startswith(watched + "/"))


class DiscoveryStore:
    """Tokens, their member keys and the write history, in `<state_dir>/discovery.sqlite3`.

    Every method is one short transaction; writes take the database's write lock first (`BEGIN IMMEDIATE`)
    so the global index stays strictly increasing even with a CLI process writing beside the server.
    """

    def __init__(self, state_dir: Path, *, busy_timeout: float = DEFAULT_BUSY_TIMEOUT):
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / DB_NAME
        self.busy_timeout = busy_timeout
        # One connection per thread: the server calls the store from a few threads at once (a sqlite connection
        # must not be used by two at a time); sqlite serialises the writes of all of them and of other processes.
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            for path in (self.state_dir, self.path):
                if path.exists() and not os.access(path, os.W_OK):  # sqlite would open it, and fail each write
                    code = errno.EROFS if _read_only_mount(path) else errno.EACCES
                    raise OSError(code, os.strerror(code))
            db = self._db
            if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone() is None:
                # WAL: readers never wait for a writer, and a commit is atomic and survives a crash or restart of
                # the server (persistent: set once, in the file).
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            if self._read_only(exc):
                raise StateReadOnly(f"cannot write the discovery state at {self.path}: {_reason(exc)}") from exc
            raise BadInput(f"cannot open the discovery state at {self.path}: {_reason(exc)}") from exc

    def _read_only(self, exc: BaseException) -> bool:
        if isinstance(exc, OSError):
            return exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM)
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        return code in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM) or not all(
            os.access(p, os.W_OK) for p in (self.state_dir, self.path) if p.exists()
        )

    @property
    def _db(self) -> sqlite3.Connection:
        """This thread's connection."""
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=self.busy_timeout)
            try:
                # With WAL, NORMAL still commits atomically and durably across a crash of the server; no fsync
                # per registration (only a power cut can lose the last writes, and a lab then needs a new token).
                db.execute("PRAGMA synchronous=NORMAL")
            except sqlite3.Error:
                db.close()
                raise
            self._local.db = db
            with self._connections_lock:
                self._connections.append(db)
        return db

    def close(self) -> None:
        """Close every thread's connection (call it once no thread uses the store any more)."""
        with self._connections_lock:
            for db in self._connections:
                db.close()
            self._connections.clear()
        self._local = threading.local()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def _next_index(self, db: sqlite3.Connection) -> int:
        db.execute("UPDATE meta SET value = value + 1 WHERE name = 'index'")
        return self._index_in(db)

    @_guarded
    def current_index(self) -> int:
        return self._index_in(self._db)

    def _index_in(self, db: sqlite3.Connection) -> int:
        return int(db.execute("SELECT value FROM meta WHERE name = 'index'").fetchone()[0])

    @_guarded
    def consistently(self, read: Callable[[], R]) -> R:
        """`read`'s store calls, all from one snapshot of the database (one read transaction).

        A listing and the index reported with it must belong together: etcd's discovery client watches from
        that index + 1, so an index read after a registration the listing missed hides that member for good.
        """
        db = self._db
        db.execute("BEGIN")
        try:
            return read()
        finally:
            db.execute("COMMIT")  # ends the read transaction; nothing was written

    # tokens

    @_guarded
    def create_token(self, size: int = DEFAULT_SIZE, *, now: float | None = None) -> DiscoveryToken:
        """A fresh token whose `_config/size` is `size` (one write: the token directory appears with it)."""
        check_size(size)
        token = new_token()
        created_at = time.time() if now is None else now
        with self._write() as db:
            index = self._next_index(db)
            db.execute("INSERT INTO tokens VALUES (?, ?, ?, ?)", (token, size, created_at, index))
            db.execute(
                "INSERT INTO events (idx, token, action, name, value, created_index) VALUES (?, ?, 'set', ?, ?, ?)",
                (index, token, SIZE_KEY, str(size), index),
            )
        return DiscoveryToken(token, size, created_at, index)

    @_guarded
    def token(self, token: str) -> DiscoveryToken | None:
        row = self._db.execute("SELECT * FROM tokens WHERE token = ?", (token,)).fetchone()
        return DiscoveryToken(*row) if row else None

    @_guarded
    def tokens(self) -> list[DiscoveryToken]:
        return [DiscoveryToken(*row) for row in self._db.execute("SELECT * FROM tokens ORDER BY created_index")]

    @_guarded
    def collect(self, max_age_seconds: float, *, now: float | None = None) -> int:
        """Delete tokens created more than `max_age_seconds` ago, with their keys and history."""
        cutoff = (time.time() if now is None else now) - max_age_seconds
        with self._write() as db:
            old = [r[0] for r in db.execute("SELECT token FROM tokens WHERE created_at < ?", (cutoff,))]
            for table in ("events", "nodes", "tokens"):
                db.executemany(f"DELETE FROM {table} WHERE token = ?", [(t,) for t in old])
        return len(old)

    # keys

    def _require(self, token: str, key: str) -> DiscoveryToken:
        found = self.token(token) if TOKEN_RE.fullmatch(token) else None
        if found is None:
            raise key_not_found(key)
        return found

    @_guarded
    def members(self, token: str) -> list[KeyNode]:
        """The member nodes registered so far, in registration order (never `_config`)."""
        rows = self._db.execute(
            "SELECT name, value, created_index, modified_index FROM nodes WHERE token = ? ORDER BY created_index",
            (token,),
        )
        return [KeyNode(f"/{token}/{name}", value, c, m) for name, value, c, m in rows]

    @_guarded
    def get(self, token: str, name: str) -> KeyNode:
        """The node at `/<token>/<name>` (`name` "" is the token's directory), or `EtcdError` 100."""
        key = f"/{token}/{name}" if name else f"/{token}"
        tok = self._require(token, key)
        size_node = KeyNode(f"/{token}/{SIZE_KEY}", str(tok.size), tok.created_index, tok.created_index)
        if name == "":
            # `_config` is hidden, as etcd hides keys starting with '_' from listings.
            return KeyNode(key, None, tok.created_index, tok.created_index, tuple(self.members(token)))
        if name == CONFIG_DIR:
            return KeyNode(key, None, tok.created_index, tok.created_index, (size_node,))
        if name == SIZE_KEY:
            return size_node
        row = self._db.execute(
            "SELECT value, created_index, modified_index FROM nodes WHERE token = ? AND name = ?", (token, name)
        ).fetchone()
        if row is None:
            raise key_not_found(key)
        return KeyNode(key, *row)

    @_guarded
    def put(self, token: str, name: str, value: str, *, prev_exist: bool | None = None) -> Event:
        """Write a member key. `prev_exist=False` is etcd's create (412/105 if it exists), `True` an update
        (404/100 if it does not), `None` a plain set."""
        key = f"/{token}/{name}" if name else f"/{token}"
        if name in ("", CONFIG_DIR):
            raise not_a_file(key)
        if name.startswith(CONFIG_DIR + "/"):
            raise read_only(key)
        if not MEMBER_KEY_RE.fullmatch(name):
            raise invalid_field(f"member key {name!r}: use letters, digits, '.', '_' and '-' (etcd uses its hex id)")
        with self._write() as db:
            self._require(token, key)
            row = db.execute(
                "SELECT value, created_index, modified_index FROM nodes WHERE token = ? AND name = ?", (token, name)
            ).fetchone()
            prev = KeyNode(key, *row) if row else None
            if prev is not None and prev_exist is False:
                raise node_exists(key)
            if prev is None and prev_exist is True:
                raise key_not_found(key)
            index = self._next_index(db)
            created = prev.created_index if prev else index
            action = "create" if prev_exist is False else "update" if prev_exist else "set"
            db.execute("INSERT OR REPLACE INTO nodes VALUES (?, ?, ?, ?, ?)", (token, name, value, created, index))
            db.execute(
                "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (index, token, action, name, value, created, *(row or (None, None, None))),
            )
        return Event(index, action, KeyNode(key, value, created, index), prev)

    @_guarded
    def first_event_since(self, token: str, name: str, *, recursive: bool, since: int) -> Event | None:
        """The first write at index ≥ `since` that a watch on `name` sees: the waitIndex replay."""
        rows = self._db.execute(
            "SELECT idx, action, name, value, created_index, prev_value, prev_created, prev_modified"
            " FROM events WHERE token = ? AND idx >= ? ORDER BY idx",
            (token, since),
        )
        for idx, action, ev_name, value, created, prev_value, prev_created, prev_modified in rows:
            if watch_matches(ev_name, name, recursive):
                key = f"/{token}/{ev_name}"
                prev = KeyNode(key, prev_value, prev_created, prev_modified) if prev_value is not None else None
                return Event(idx, action, KeyNode(key, value, created, idx), prev)
        return None


SECONDS_RE = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)", re.ASCII)


def env_seconds(name: str, default: float, maximum: float) -> float:
    """A number of seconds in (0, `maximum`] from environment variable `name` (plain ASCII decimal: no nan, inf,
    exponent or other scripts' digits, which `float` would take), else `default`."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    value = float(raw) if SECONDS_RE.fullmatch(raw.strip()) else math.nan
    if not 0 < value <= maximum:  # false for nan
        raise BadInput(f"invalid {name}={raw!r}: a positive number of seconds, at most {maximum:g}")
    return value


def _read_only_mount(path: Path) -> bool:
    return bool(os.statvfs(path).f_flag & os.ST_RDONLY)


def _reason(exc: BaseException) -> str:
    return exc.strerror or str(exc) if isinstance(exc, OSError) else str(exc)
