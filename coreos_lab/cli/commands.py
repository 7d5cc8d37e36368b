"""Adds every command group to the root group. One line per command module."""

from __future__ import annotations

import click


def register(root: click.Group) -> None:
    from coreos_lab.cli import health, mirror

    root.add_command(mirror.mirror)
    root.add_command(health.health)
