"""`lab init`, `lab render`, `lab config`: one lab.yaml → Vagrantfile, config.rb and user-data."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from coreos_lab.cli.options import json_option
from coreos_lab.distros import DISTRO_NAMES


class _AsciiDigits(click.ParamType):
    """An integer in ASCII digits: click's int() would also take "٣" and "1_000", which no user means."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and not re.fullmatch(r"\s*[+-]?[0-9]+\s*", value):
            self.fail(f"{value!r} is not an integer in digits 0-9", param, ctx)
        return super().convert(value, param, ctx)


class AsciiInt(_AsciiDigits, click.types.IntParamType):
    pass


class AsciiIntRange(_AsciiDigits, click.IntRange):
    pass


# The settings every one of these commands takes as flags (precedence: … ← environment ← flags). Names and
# help come from the settings table in coreos_lab.lab.settings; listed here so `--help` needs no import of it.
_FLAGS: list[tuple[str, str, Any, str]] = [
    # (setting path, flag, click type, help)
    ("nodes", "--nodes", AsciiIntRange(1, 99), "Number of machines."),
    ("distro", "--distro", click.Choice(DISTRO_NAMES), "Distribution."),
    ("channel", "--channel", str, "Release channel (alpha, beta, stable; lts for flatcar)."),
    ("version", "--version", str, "Box version; the mirror must have it (init: default the newest it has)."),
    ("provider", "--provider", str, "Vagrant provider (virtualbox, libvirt)."),
    ("libvirt.driver", "--libvirt-driver", click.Choice(["auto", "kvm", "qemu"]), "libvirt domain type."),
    ("name_prefix", "--name-prefix", str, "Machine names are <prefix>-01, <prefix>-02, …"),
    ("subnet", "--subnet", str, "Private network, e.g. 172.17.8.0/24; node i gets host address 100+i."),
    ("memory", "--memory", AsciiInt(), "MiB of memory per machine."),
    ("cpus", "--cpus", AsciiInt(), "Virtual CPUs per machine."),
    ("etcd.members", "--etcd-members", AsciiInt(), "How many machines are etcd members (the rest run proxies)."),
    ("etcd.image", "--etcd-image", str, "Container image etcd runs from (Flatcar; default: the distro's)."),
    ("etcd.image_source", "--etcd-image-source", click.Choice(["mirror", "upstream"]), "Where guests pull it."),
    ("discovery.mode", "--discovery-mode", click.Choice(["local", "public", "static"]), "etcd bootstrap."),
    ("mirror.url", "--mirror-url", str, "Mirror/discovery server URL as this host reaches it."),
    ("mirror.guest_host", "--mirror-guest-host", str, "The host's address as guests reach it."),
    ("mirror.root", "--root", click.Path(file_okay=False), "Mirror directory."),
    ("mirror.token_file", "--mirror-token-file", click.Path(dir_okay=False), "A private mirror's token file."),
]


def lab_dir_argument(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.argument(
        "lab_dir", required=False, default=".", type=click.Path(file_okay=False, path_type=Path), metavar="[DIR]"
    )(func)


def setting_flags(func: Callable[..., Any]) -> Callable[..., Any]:
    for path, flag, kind, help_text in reversed(_FLAGS):
        dest = "flag_" + path.replace(".", "_")
        func = click.option(flag, dest, type=kind, default=None, help=help_text)(func)
    return func


def collect_flags(kwargs: dict[str, Any]) -> dict[str, Any]:
    """{setting path: value} for the flags given on the command line."""
    return {path: kwargs.pop("flag_" + path.replace(".", "_")) for path, *_ in _FLAGS}


def warn_even_members(members: int) -> None:
    """One line, no error: a quorum is a majority, so an even member count buys nothing over one member fewer."""
    from coreos_lab import console

    if members % 2 == 0:
        survived = (members - 1) // 2
        console.warn(
            f"etcd.members is {members}: {members} members survive no more failures than {members - 1} "
            f"({survived or 'none'}), since a quorum is a majority; use {members - 1} or {members + 1}"
        )


@click.command()
@lab_dir_argument
@setting_flags
@click.option("--force", is_flag=True, help="Replace an existing lab.yaml (your copy is kept beside it).")
@json_option
def init(lab_dir: Path, force: bool, as_json: bool, **kwargs: Any) -> None:
    """Write a commented lab.yaml in DIR (default: the current directory).

    The box version is pinned to the newest the mirror has unless --version names one it has; with an
    empty mirror nothing is written (fetch or import a box first).
    """
    from coreos_lab import console
    from coreos_lab.lab.labfile import init_lab

    result = init_lab(lab_dir, flags=collect_flags(kwargs), force=force)
    warn_even_members(result.config.etcd_members)
    if as_json:
        console.print_json(result.as_dict())
        return
    config = result.config
    if result.kept_copy:
        console.info(f"kept your previous lab.yaml as {result.kept_copy}")
    members = config.etcd_members
    console.success(
        f"wrote {result.path}: {len(config.nodes)} x {config.box_name} {config.version}, {members} etcd member(s), "
        f"discovery {config.discovery_mode}"
    )
    console.info(f"next: `lab render {lab_dir}`")


@click.command()
@lab_dir_argument
@setting_flags
@click.option("--force", is_flag=True, help="Overwrite files edited since the last render (keeps your copies).")
@json_option
def render(lab_dir: Path, force: bool, as_json: bool, **kwargs: Any) -> None:
    """Render Vagrantfile, config.rb and user-data/ from DIR/lab.yaml.

    A discovery token sized to the etcd members is created when the cluster does not exist yet; an existing
    cluster keeps its token. Files you edited since the last render are not overwritten unless --force.
    """
    from coreos_lab import console
    from coreos_lab.lab.config import load_config
    from coreos_lab.lab.render import render_lab
    from coreos_lab.vagrant.libvirt import resolve_driver

    config = load_config(lab_dir, flags=collect_flags(kwargs))
    driver = resolve_driver(str(config["libvirt.driver"])) if config.provider == "libvirt" else None
    result = render_lab(config, force=force, libvirt_driver=driver)
    warn_even_members(config.etcd_members)
    if as_json:
        console.print_json(result.as_dict())
        return
    for copy in result.kept_copies:
        console.warn(f"kept your edited copy as {lab_dir / copy}")
    for rel in result.written:
        console.info(f"wrote {lab_dir / rel}")
    for rel in result.removed:
        console.info(f"removed {lab_dir / rel} (machine no longer configured)")
    if result.unchanged:
        console.info(f"{len(result.unchanged)} file(s) unchanged")
    if result.discovery is not None and result.discovery.url:
        console.info(f"discovery token ({result.token}): {result.discovery.url}")
    elif result.discovery is not None:
        console.info("static etcd member list (no discovery token)")
    console.success(f"rendered {len(config.nodes)} machine(s) in {lab_dir}")


@click.command("config")
@lab_dir_argument
@setting_flags
@json_option
def config_(lab_dir: Path, as_json: bool, **kwargs: Any) -> None:
    """Show DIR's effective configuration and where each value came from.

    Precedence: default ← lab.yaml ← environment LAB_* ← flag.
    """
    from coreos_lab import console
    from coreos_lab.lab.config import load_config

    config = load_config(lab_dir, flags=collect_flags(kwargs))
    doc = config.as_dict()
    if as_json:
        console.print_json(doc)
        return
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None)
    for column in ("setting", "value", "source"):
        table.add_column(column)
    for path, item in doc["settings"].items():
        table.add_row(Text(path), Text(_show(item["value"])), Text(item["source"]))
    for path, item in doc["structured"].items():
        if item["value"] is not None:
            table.add_row(Text(path), Text(_show(item["value"])), Text(item["source"]))
    console.out().print(table)
    nodes = Table(box=None)
    for column in ("machine", "ip", "etcd", "metadata"):
        nodes.add_column(column)
    for node in config.nodes:
        nodes.add_row(Text(node.name), Text(node.ip), Text(node.role), Text(node.fleet_metadata))
    console.out().print(nodes)


def _show(value: Any) -> str:
    import json

    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int):
        return str(value)
    return json.dumps(value)
