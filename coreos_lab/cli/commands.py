"""Adds every command group to the root group. One import and one line per command module."""

from __future__ import annotations

import click


def register(root: click.Group) -> None:
    from coreos_lab.cli import (
        discovery,
        drill,
        health,
        lab,
        lifecycle,
        mirror,
        mirror_image,  # noqa: F401 - adds `image` to the mirror group
        mirror_publish,  # noqa: F401 - adds `publish` to the mirror group
        mirror_serve,  # noqa: F401 - adds `serve` to the mirror group
        smoke,
    )

    root.add_command(mirror.mirror)
    root.add_command(discovery.discovery)
    root.add_command(lab.init)
    root.add_command(lab.render)
    root.add_command(lab.config_)
    lifecycle.register(root)  # up, halt, destroy, status, ssh, doctor: top-level commands
    root.add_command(health.health)
    root.add_command(smoke.smoke)
    root.add_command(drill.drill)
