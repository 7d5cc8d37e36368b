"""Adds every command group to the root group. One line per command module."""

from __future__ import annotations

import click


def register(root: click.Group) -> None:
    from coreos_lab.cli import lifecycle, mirror, mirror_serve  # noqa: F401 - mirror_serve adds `serve` to the mirror group

    root.add_command(mirror.mirror)
    for command in (lifecycle.up, lifecycle.halt, lifecycle.destroy, lifecycle.status, lifecycle.ssh, lifecycle.doctor):
        root.add_command(command)
