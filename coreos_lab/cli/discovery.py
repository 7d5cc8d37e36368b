"""`lab discovery …`: etcd discovery tokens (served by `lab mirror serve`)."""

from __future__ import annotations

from pathlib import Path

import click

from coreos_lab.cli.options import json_option, resolve_root, root_option

timeout_option = click.option(
    "--timeout", type=click.FloatRange(min=0.1), default=10.0, show_default=True, help="HTTP timeout in seconds."
)


@click.group()
def discovery() -> None:
    """Discovery tokens for etcd clusters, served locally (no discovery.etcd.io needed)."""


@discovery.command("new")
@click.option(
    "--size",
    type=int,
    default=3,
    show_default=True,
    help="Number of etcd members that bootstrap the cluster (1-99; not the number of nodes).",
)
@click.option(
    "--server",
    metavar="URL|public",
    default=None,
    help="Discovery server to ask; `public` means discovery.etcd.io. Default: the local server, or the "
    "on-disk store it serves when none is running.",
)
@root_option
@timeout_option
@json_option
def new(size: int, server: str | None, root: Path | None, timeout: float, as_json: bool) -> None:
    """Print a fresh token URL (give it to etcd as --discovery)."""
    from coreos_lab import console
    from coreos_lab.discovery.client import allocate

    created = allocate(size, server=server, mirror_root=resolve_root(root), timeout=timeout)
    if as_json:
        console.print_json(created.as_dict())
        return
    click.echo(created.url)
    if created.source == "store":
        console.info("no discovery server is running: the token is stored and `lab mirror serve` will serve it")
    elif created.source == "public":
        console.warn("discovery.etcd.io is deprecated; guests behind a firewall cannot reach it")


@discovery.command("show")
@click.argument("token_url")
@root_option
@timeout_option
@json_option
def show(token_url: str, root: Path | None, timeout: float, as_json: bool) -> None:
    """Size and registered members of a token."""
    from coreos_lab import console
    from coreos_lab.discovery.client import inspect

    info = inspect(token_url, mirror_root=resolve_root(root), timeout=timeout)
    if as_json:
        console.print_json(info.as_dict())
        return
    state = "complete" if info.complete else f"waiting for {info.size - len(info.members)} more"
    console.info(f"{info.url}: size {info.size}, {len(info.members)} registered ({state})")
    if info.source == "store":
        console.info("(read from the on-disk store: no discovery server answered)")
    if info.members:
        from rich.table import Table

        table = Table(box=None)
        for column in ("id", "name", "peer_urls", "index"):
            table.add_column(column)
        for m in info.members:
            table.add_row(m.id, m.name, ",".join(m.peer_urls), str(m.created_index))
        console.out().print(table)
