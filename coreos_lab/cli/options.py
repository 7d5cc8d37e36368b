"""Options shared by several commands."""

from __future__ import annotations

from pathlib import Path

import click

json_option = click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON document on stdout.")

root_option = click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Mirror root (default: $LAB_MIRROR_ROOT, else ./boxes if present, else ~/.local/share/coreos-lab/boxes).",
)


def resolve_root(root: Path | None) -> Path:
    from coreos_lab.paths import default_mirror_root

    return root if root is not None else default_mirror_root()
