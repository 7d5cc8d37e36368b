"""JSON that comes from outside (a user's file, an archive member, a record on disk, an HTTP body), decoded within
bounds: every failure is a `BadInput` naming where the document came from, never a RecursionError or a
MemoryError.

Python's json parser recurses once per nesting level, so a few kilobytes of `[[[[…` end in RecursionError at
whatever depth the stack allows; no document this project reads nests more than a handful of levels, so anything
deeper than MAX_DEPTH is refused outright.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from coreos_lab.errors import BadInput

MAX_DEPTH = 64
MAX_BYTES = 16 << 20  # far above any metadata, record, manifest or index this project reads


def parse_json(data: bytes | str, source: str, what: str | None = None, *, max_bytes: int = MAX_BYTES) -> Any:
    """The decoded document. `source` names it (a path, URL or archive member) and `what` says what it should
    be ("box metadata"), both for the error message."""
    subject = f"{source}: {what}" if what else source
    if len(data) > max_bytes:
        raise BadInput(f"{subject} has more than {max_bytes} bytes; refused")
    try:
        doc = json.loads(data, parse_constant=_refuse_constant)
    except UnicodeDecodeError as exc:
        raise BadInput(f"{subject} is not JSON: not UTF-8 text ({exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise BadInput(f"{subject} is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise BadInput(f"{subject} nests deeper than {MAX_DEPTH} levels; refused") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts, NaN
        raise BadInput(f"{subject} is not JSON: {exc}") from None
    if nesting(doc) > MAX_DEPTH:
        raise BadInput(f"{subject} nests deeper than {MAX_DEPTH} levels; refused")
    return doc


def read_json_file(
    path: Path, source: str | None = None, what: str | None = None, *, max_bytes: int = MAX_BYTES
) -> Any:
    """`parse_json` of a file, of which no more than `max_bytes` (and one to tell) is read."""
    try:
        with path.open("rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise BadInput(f"{source}: {exc.strerror}" if source else f"cannot read {path}: {exc.strerror}") from None
    return parse_json(data, source or str(path), what, max_bytes=max_bytes)


def nesting(doc: Any) -> int:
    """How deep arrays and objects nest in a decoded document (a scalar: 0, `[]`: 1), without recursing."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(doc, 0)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        deepest = max(deepest, depth + 1)
        if deepest > MAX_DEPTH:
            break
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")
