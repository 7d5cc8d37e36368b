"""Options shared by several commands."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click

from coreos_lab.errors import BadInput

FC = TypeVar("FC", bound=Callable[..., object])

json_option = click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON document on stdout.")

# coreos_lab.cluster.health.CHECK_NAMES, spelled out so that building the CLI does not import the health package
# (tests/test_health.py keeps the two equal).
CHECK_NAMES = ("units", "etcd", "members", "fleet")


def check_option(help: str) -> Callable[[FC], FC]:
    """`--check NAME`, repeatable, into `checks`: the health checks a command runs or waits for."""
    return click.option("--check", "checks", multiple=True, type=click.Choice(CHECK_NAMES), help=help)


root_option = click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Mirror root (default: $LAB_MIRROR_ROOT, else ./boxes if present, else ~/.local/share/coreos-lab/boxes).",
)


def resolve_root(root: Path | None) -> Path:
    from coreos_lab.paths import default_mirror_root

    return root if root is not None else default_mirror_root()


def resolve_existing_root(root: Path | None) -> Path:
    """The mirror root a command only reads. One the user named (--root, $LAB_MIRROR_ROOT) must exist, or a typo
    would read as an empty mirror; the default one may not exist yet (nothing imported so far)."""
    resolved = resolve_root(root)
    if root is not None or os.environ.get("LAB_MIRROR_ROOT"):
        check_root(resolved)
    return resolved


def check_root(root: Path) -> Path:
    """A mirror root that must exist, or BadInput naming it (also for a name the file system refuses)."""
    try:
        is_dir, exists = root.is_dir(), root.exists()
    except OSError as exc:  # e.g. ENAMETOOLONG
        raise BadInput(f"mirror root {root}: {exc.strerror or exc}") from exc
    if not is_dir:
        raise BadInput(
            f"mirror root {root} {'is not a directory' if exists else 'does not exist'}",
            hint="add boxes with `lab mirror import` / `lab mirror fetch`, or pass --root",
        )
    return root


def check_base_url(base_url: str, option: str = "--base-url") -> str:
    """An absolute http(s) URL without query or fragment; returned without a trailing '/'."""
    from coreos_lab.urls import is_http_url

    if not is_http_url(base_url, base=True):
        raise BadInput(f"invalid {option} {base_url!r}: give an absolute http(s) URL such as http://10.0.2.2:8080")
    return base_url.rstrip("/")


def split_dir(words: tuple[str, ...]) -> tuple[Path, list[str]]:
    """`[DIR] REST…`: the first word is the lab directory when it is a directory holding a lab.yaml."""
    if words and (Path(words[0]) / "lab.yaml").is_file():
        return Path(words[0]), list(words[1:])
    return Path.cwd(), list(words)
