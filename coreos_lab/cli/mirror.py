"""`lab mirror …`: the box mirror."""

from __future__ import annotations

from pathlib import Path

import click

from coreos_lab.cli.options import json_option, resolve_root, root_option


@click.group()
def mirror() -> None:
    """Keep boxes in a local mirror and serve them to Vagrant."""


@mirror.command("list")
@root_option
@click.option("--base-url", default=None, help="Base URL the URLs are shown under (default: the serve address).")
@json_option
def list_(root: Path | None, base_url: str | None, as_json: bool) -> None:
    """One row per stored box."""
    from coreos_lab import console
    from coreos_lab.paths import default_base_url
    from coreos_lab.store import MirrorStore

    store = MirrorStore(resolve_root(root))
    base = base_url or default_base_url()
    rows = [e.as_dict(base) for e in store.entries()]
    if as_json:
        console.print_json({"root": str(store.root), "boxes": rows})
        return
    if not rows:
        console.info(f"no boxes in {store.root}")
        return
    from rich.table import Table

    table = Table(box=None)
    for col in ("name", "version", "provider", "architecture", "size", "sha256", "metadata_url"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["name"],
            r["version"],
            r["provider"],
            r["architecture"],
            str(r["size"]),
            r["sha256"][:12],
            r["metadata_url"],
        )
    console.out().print(table)
