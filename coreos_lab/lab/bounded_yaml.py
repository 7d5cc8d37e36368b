"""YAML with bounds, for files a user (or anyone who can write to the lab directory) controls.

`yaml.safe_load` refuses code, not size: aliases expand without limit (nine anchors of nine aliases each are
hundreds of millions of values once anything walks them, which validation and `lab config` must), and deep nesting
overflows Python's stack in PyYAML's recursive composer (field-notes §9). Here the composer counts as it builds:
every value, every alias by the size of what it names, and the depth an alias reaches; past a bound the load stops
at once, at that place in the file. Counting costs nothing measurable, and aliases within the bounds still work
(`<<: *defaults`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.events import AliasEvent
from yaml.nodes import Node
from yaml.resolver import Resolver

MAX_BYTES = 1 << 20  # a lab.yaml is a few KiB; unit files inside it leave room to spare
MAX_VALUES = 100_000  # scalars, lists and mappings once aliases are expanded
MAX_DEPTH = 32  # lists and mappings inside each other, aliases expanded; lab.yaml needs 5

try:  # libyaml's parser when PyYAML has it (ten times faster); the composer stays ours in either case
    from yaml._yaml import CParser as _Parser

    _PARSER_BASES: tuple[type, ...] = (_Parser,)
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    from yaml.parser import Parser
    from yaml.reader import Reader
    from yaml.scanner import Scanner

    _PARSER_BASES = (Reader, Scanner, Parser)


class TooLarge(yaml.MarkedYAMLError):
    """The document exceeds a bound; `problem_mark` is where in the file it did."""


class _BoundedComposer(Composer):
    # From the parser the loader mixes in.
    check_event: Callable[..., bool]
    peek_event: Callable[[], Any]

    def __init__(self) -> None:
        super().__init__()
        self._depth = 0  # of the node being composed
        self._values = 0  # composed so far, aliases counted by their expansion
        self._reach = 0  # deepest depth reached in the current anchored subtree, aliases expanded
        self._expansion: dict[str, tuple[int, int]] = {}  # anchor → (values, height) of the finished node

    def compose_node(self, parent: Node | None, index: Any) -> Any:
        event = self.peek_event()
        if self.check_event(AliasEvent):
            node = super().compose_node(parent, index)  # refuses an undefined alias
            if event.anchor not in self._expansion:
                raise TooLarge(
                    None, None, f"alias *{event.anchor} refers to a value that contains it", event.start_mark
                )
            values, height = self._expansion[event.anchor]
            self._grow(values, self._depth + height, event)
            return node
        self._depth += 1
        before, outer_reach = self._values, self._reach
        self._reach = 0
        self._grow(1, self._depth, event)
        node = super().compose_node(parent, index)
        if event.anchor is not None:
            self._expansion[event.anchor] = (self._values - before, self._reach - self._depth + 1)
        self._reach = max(outer_reach, self._reach)
        self._depth -= 1
        return node

    def _grow(self, values: int, reach: int, event: Any) -> None:
        self._values += values
        self._reach = max(self._reach, reach)
        if self._values > MAX_VALUES:
            problem = f"more than {MAX_VALUES} values"
            if isinstance(event, AliasEvent):
                problem += f" once alias *{event.anchor} is expanded"
            raise TooLarge(None, None, problem, event.start_mark)
        if reach > MAX_DEPTH:
            via = f" (through alias *{event.anchor})" if isinstance(event, AliasEvent) else ""
            raise TooLarge(None, None, f"nested more than {MAX_DEPTH} levels deep{via}", event.start_mark)


class BoundedSafeLoader(_BoundedComposer, *_PARSER_BASES, SafeConstructor, Resolver):  # type: ignore[misc]
    def __init__(self, stream: str | bytes) -> None:
        for base in _PARSER_BASES:
            base.__init__(self, stream)  # type: ignore[misc]
        _BoundedComposer.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)


def load(text: str | bytes) -> Any:
    """The single document in `text` (bytes: UTF-8, or UTF-16 with a BOM), as `yaml.safe_load` reads it;
    `TooLarge` past a bound, another `yaml.YAMLError` when it is not valid YAML (or not text)."""
    if len(text) > MAX_BYTES:
        raise TooLarge(None, None, f"larger than {MAX_BYTES // 1024} KiB", None)
    loader = BoundedSafeLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
