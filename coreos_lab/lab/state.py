"""A lab's own state in `DIR/.lab/state.json`: its discovery token, what was rendered, whether the cluster exists.

Token lifecycle (one token = one cluster, ever: etcd refuses or misbehaves on a reused token):
- no cluster yet and no usable token → `lab render` creates a fresh token sized to the etcd member count;
- re-rendering keeps the token (same mode, size and server); a token whose cluster never existed is retired
  (marked used) when lab.yaml changes what it must be;
- `mark_created()` (lifecycle, once `vagrant up` has started machines) ties the token to a cluster;
- `mark_destroyed()` (lifecycle, after `vagrant destroy`) marks the token used; it is never rendered again.

Render hashes: every generated file's sha256 as last written, so `lab render` can tell a user's edit from its
own output. Writes are atomic; a render records the hashes it is about to write (`pending`) first, so a crash
between files never turns the lab's own output into "edited by the user".
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from coreos_lab.errors import BadInput
from coreos_lab.fsutil import atomic_write_text

STATE_DIR = ".lab"
STATE_FILE = "state.json"
FORMAT = 1


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class LabToken:
    """The lab's discovery token as recorded in its state, and the URLs it is reached at."""

    token: str
    url: str  # as the host reaches it
    guest_url: str  # as the guests reach it (written into user-data)
    size: int  # number of etcd members
    mode: str  # local | public
    server: str  # the discovery server's base URL (host side)
    created_at: str = field(default_factory=utc_now)


@dataclass
class LabState:
    lab_dir: Path
    created_at: str = field(default_factory=utc_now)
    token: LabToken | None = None
    used_tokens: list[str] = field(default_factory=list)
    cluster_created_at: str | None = None  # set while the cluster exists
    destroyed_at: str | None = None  # when it was last destroyed
    rendered: dict[str, str] = field(default_factory=dict)  # relative path → sha256
    pending: dict[str, str] = field(default_factory=dict)  # hashes a render in progress is writing
    rendered_at: str | None = None
    nodes: list[dict[str, Any]] = field(default_factory=list)

    # -- files -------------------------------------------------------------------------------------------
    @staticmethod
    def path_for(lab_dir: Path) -> Path:
        return Path(lab_dir) / STATE_DIR / STATE_FILE

    @property
    def path(self) -> Path:
        return self.path_for(self.lab_dir)

    @classmethod
    def load(cls, lab_dir: Path) -> LabState:
        """The lab's state; a fresh (unsaved) one when there is none yet. A damaged file (not JSON, fields of the
        wrong type: it may have been edited) is `BadInput` naming it, never a crash later."""
        path = cls.path_for(lab_dir)
        if not path.is_file():
            return cls(Path(lab_dir))
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            token = _typed(doc, "token", dict | None)
            return cls(
                lab_dir=Path(lab_dir),
                created_at=_typed(doc, "created_at", str),
                token=_token(token) if token else None,
                used_tokens=_strings(_typed(doc, "used_tokens", list, []), "used_tokens"),
                cluster_created_at=_typed(doc, "cluster_created_at", str | None),
                destroyed_at=_typed(doc, "destroyed_at", str | None),
                rendered=_hashes(_typed(doc, "rendered", dict, {}), "rendered"),
                pending=_hashes(_typed(doc, "pending", dict, {}), "pending"),
                rendered_at=_typed(doc, "rendered_at", str | None),
                nodes=_typed(doc, "nodes", list, []),
            )
        except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
            raise BadInput(
                f"{path}: damaged lab state ({type(exc).__name__}: {exc})",
                hint="restore it from a backup; deleting it forgets the cluster's discovery token",
            ) from exc

    def save(self) -> None:
        doc = {"format": FORMAT, **asdict(self)}
        doc.pop("lab_dir")
        atomic_write_text(self.path, json.dumps(doc, indent=2) + "\n")

    # -- the cluster ------------------------------------------------------------------------------------
    @property
    def cluster_exists(self) -> bool:
        return self.cluster_created_at is not None

    def mark_created(self) -> None:
        """The cluster's machines exist (called by lifecycle at `up`): its token now belongs to it."""
        if self.cluster_created_at is None:
            self.cluster_created_at = utc_now()
        self.save()

    def mark_destroyed(self) -> None:
        """The cluster is gone (called by lifecycle after `destroy`): its token is used up for good."""
        self.retire_token()
        self.cluster_created_at = None
        self.destroyed_at = utc_now()
        self.save()

    # -- the token --------------------------------------------------------------------------------------
    def retire_token(self) -> None:
        """Mark the current token used (it is never rendered again) and forget it."""
        if self.token is not None:
            if self.token.token not in self.used_tokens:
                self.used_tokens.append(self.token.token)
            self.token = None

    def is_used(self, token: str) -> bool:
        return token in self.used_tokens

    def set_token(self, token: LabToken) -> None:
        if self.is_used(token.token):
            raise BadInput(f"discovery token {token.token} was already used by a destroyed cluster")
        self.token = token

    # -- rendering --------------------------------------------------------------------------------------
    def known_hashes(self, relpath: str) -> set[str]:
        return {h for h in (self.rendered.get(relpath), self.pending.get(relpath)) if h}


_MISSING = object()


def _typed(doc: Any, key: str, kind: Any, default: Any = _MISSING) -> Any:
    """`doc[key]` if it is of `kind` (`default` when absent and one is given); else TypeError naming the field."""
    if not isinstance(doc, dict):
        raise TypeError(f"expected a JSON object, found {type(doc).__name__}")
    if key not in doc and default is not _MISSING:
        return default
    value = doc[key]
    if not isinstance(value, kind):
        raise TypeError(f"{key} is {type(value).__name__}")
    return value


def _strings(values: list[Any], key: str) -> list[str]:
    if not all(isinstance(v, str) for v in values):
        raise TypeError(f"{key} holds something other than strings")
    return values


def _hashes(values: dict[str, Any], key: str) -> dict[str, str]:
    if not all(isinstance(v, str) for v in values.values()):
        raise TypeError(f"{key} holds something other than sha256 strings")
    return values


def _token(fields: dict[str, Any]) -> LabToken:
    token = LabToken(**fields)
    if not all(isinstance(getattr(token, f), str) for f in ("token", "url", "guest_url", "mode", "server")) or (
        not isinstance(token.size, int) or isinstance(token.size, bool)
    ):
        raise TypeError(f"token has a field of the wrong type: {fields}")
    return token
