"""The command table: where each command lives. A command's module is imported only when that command runs (or
for help), so `lab health` does not pay for the modules of `lab drill` or `lab mirror serve`.

This is click's documented pattern for lazily loaded subcommands.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator

import click

# name -> "module:attribute"; a new command is one line here.
COMMANDS = {
    "mirror": "coreos_lab.cli.mirror:mirror",
    "discovery": "coreos_lab.cli.discovery:discovery",
    "init": "coreos_lab.cli.lab:init",
    "render": "coreos_lab.cli.lab:render",
    "config": "coreos_lab.cli.lab:config_",
    "up": "coreos_lab.cli.lifecycle:up",
    "status": "coreos_lab.cli.lifecycle:status",
    "halt": "coreos_lab.cli.lifecycle:halt",
    "destroy": "coreos_lab.cli.lifecycle:destroy",
    "ssh": "coreos_lab.cli.lifecycle:ssh",
    "doctor": "coreos_lab.cli.lifecycle:doctor",
    "health": "coreos_lab.cli.health:health",
    "smoke": "coreos_lab.cli.smoke:smoke",
    "drill": "coreos_lab.cli.drill:drill",
}

MIRROR_COMMANDS = {
    "image": "coreos_lab.cli.mirror_image:image",
    "serve": "coreos_lab.cli.mirror_serve:serve",
    "publish": "coreos_lab.cli.mirror_publish:publish",
}


class LazyGroup(click.Group):
    """A group whose subcommands named in `lazy` are imported when asked for."""

    def __init__(self, *args: object, lazy: dict[str, str], **kwargs: object):
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy and name not in self.commands:
            module, _, attribute = self.lazy[name].partition(":")
            command = getattr(importlib.import_module(module), attribute)
            if not isinstance(command, click.Command) or command.name != name:
                raise TypeError(f"{self.lazy[name]} is not the command {name!r}")
            self.add_command(command)
        return super().get_command(ctx, name)


def walk(group: click.Group, path: str = "lab") -> Iterator[tuple[str, click.Command]]:
    """Every command under `group` with its full name ("lab mirror image fetch"), loading each one."""
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None
        yield f"{path} {name}", command
        if isinstance(command, click.Group):
            yield from walk(command, f"{path} {name}")
