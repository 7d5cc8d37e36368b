"""`lab up | halt | destroy | status | ssh | doctor`: a lab's machines over Vagrant."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from coreos_lab.cli.options import check_option, json_option, split_dir
from coreos_lab.errors import ExitCode

if TYPE_CHECKING:
    from coreos_lab.lab.plan import LabPlan

dir_argument = click.argument(
    "lab_dir", metavar="[DIR]", required=False, type=click.Path(file_okay=False, path_type=Path)
)


def _plan(lab_dir: Path | None) -> LabPlan:
    from coreos_lab.lab.plan import load_plan

    return load_plan((lab_dir or Path.cwd()).resolve())


def _render_nodes(nodes: list[Any]) -> None:
    from rich.table import Table

    from coreos_lab import console

    table = Table(box=None)
    for column in ("machine", "state", "provider"):
        table.add_column(column)
    for node in nodes:
        table.add_row(node.name, node.description or node.state, node.provider or "")
    console.err().print(table)


@click.command()
@dir_argument
@click.option("--no-wait", is_flag=True, help="Do not wait for the cluster to be healthy.")
@check_option("Wait for only this health check (repeatable; as in `lab health`). Default: all for the distro.")
@click.option(
    "--timeout", type=click.FloatRange(min=1), default=900.0, show_default=True, help="Seconds for the whole run."
)
@json_option
def up(lab_dir: Path | None, no_wait: bool, checks: tuple[str, ...], timeout: float, as_json: bool) -> None:
    """Bring the lab's machines up (preflight, mirror, render, vagrant up, health)."""
    from coreos_lab import console, lifecycle
    from coreos_lab.cli.live import NodeStates

    plan = _plan(lab_dir)
    headers = ("machine", "phase", "last message")
    live = console.stderr_is_terminal() and not as_json
    with NodeStates(plan.nodes, headers, ("waiting", ""), live=live, transient=False) as progress:

        def on_event(node: str, phase: str, detail: str) -> None:
            line = f"{node}: {phase}" + (f" ({detail})" if detail and phase != "creating" else "")
            progress.update(node, (phase, detail[:100]), change=phase, line=line)

        result = lifecycle.up(plan, wait=not no_wait, checks=checks, timeout=timeout, on_event=on_event)
    if as_json:
        console.print_json(result.as_dict())
        return
    if result.server == "embedded" and no_wait:
        console.warn(
            f"the mirror + discovery server ran only for this command; etcd may still be bootstrapping: "
            f"run `lab mirror serve` at {plan.mirror_url} until `lab health` is green"
        )
    if not progress.live:  # the live table already shows the final state
        _render_nodes(result.nodes)
    state = "healthy" if result.health is not None else "up (health not checked: --no-wait)"
    console.success(f"{len(plan.nodes)} machine(s) {state} in {result.seconds:.0f}s")


@click.command()
@click.argument("words", nargs=-1, metavar="[DIR] [NODE]...")
@json_option
def halt(words: tuple[str, ...], as_json: bool) -> None:
    """Stop machines (all, or the NODEs named); they keep their disks and the cluster its token."""
    from coreos_lab import console, lifecycle

    lab_dir, nodes = split_dir(words)
    plan = _plan(lab_dir)
    result = lifecycle.halt(plan, nodes)
    if as_json:
        console.print_json(result.as_dict())
        return
    _render_nodes(result.nodes)


@click.command()
@dir_argument
@click.option("--force", "-f", is_flag=True, help="Destroy without asking.")
@json_option
def destroy(lab_dir: Path | None, force: bool, as_json: bool) -> int | None:
    """Destroy every machine and retire the cluster's discovery token for good.

    Asks first. Without a terminal to ask on (CI, pipes) it refuses unless --force: destroying is never silent.
    """
    from coreos_lab import console, lifecycle
    from coreos_lab.errors import BadInput

    plan = _plan(lab_dir)
    if not force:
        if not sys.stdin.isatty():
            raise BadInput(
                f"refusing to destroy {plan.lab_dir} without confirmation: standard input is not a terminal",
                hint="pass --force to destroy without asking",
            )
        if not click.confirm(f"Destroy the {len(plan.nodes)} machine(s) of {plan.lab_dir}?", err=True):
            console.info("nothing destroyed")
            return ExitCode.ERROR
    result = lifecycle.destroy(plan)
    if as_json:
        console.print_json(result.as_dict())
        return None
    destroyed = ", ".join(result.destroyed) or "no machine existed"
    console.success(f"destroyed: {destroyed}; discovery token retired")
    return None


@click.command()
@dir_argument
@json_option
def status(lab_dir: Path | None, as_json: bool) -> None:
    """Every machine of the lab and its state."""
    from coreos_lab import console, lifecycle

    result = lifecycle.status(_plan(lab_dir))
    if as_json:
        console.print_json(result.as_dict())
        return
    _render_nodes(result.nodes)
    if result.note:
        console.warn(result.note)


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("words", nargs=-1, required=True, type=click.UNPROCESSED, metavar="[DIR] NODE [-- CMD...]")
def ssh(words: tuple[str, ...]) -> None:
    """A shell on NODE, or run CMD there and exit with its exit code."""
    import os

    from coreos_lab import lifecycle
    from coreos_lab.errors import BadInput

    lab_dir, rest = split_dir(words)
    if not rest:
        raise BadInput("name the machine: lab ssh [DIR] NODE [-- CMD...]")
    node, command = rest[0], rest[1:]
    if command[:1] == ["--"]:  # click usually consumes the separator; keep CMD exact if it did not
        command = command[1:]
    argv, env = lifecycle.ssh_command(_plan(lab_dir), node, command)
    sys.stdout.flush()
    sys.stderr.flush()
    os.chdir(lab_dir)
    os.execvpe(argv[0], argv, env)  # the terminal and the exit code belong to ssh from here on


@click.command()
@dir_argument
@click.option("--provider", default=None, help="Provider to check when DIR has no lab.yaml (default virtualbox).")
@json_option
def doctor(lab_dir: Path | None, provider: str | None, as_json: bool) -> int | None:
    """Check every prerequisite of a lab; each finding ok / warn / fail with a fix. Exit 0 when nothing fails."""
    from coreos_lab import console, lifecycle
    from coreos_lab.doctor import diagnose
    from coreos_lab.paths import default_mirror_root

    directory = (lab_dir or Path.cwd()).resolve()
    plan = _plan(directory) if (directory / "lab.yaml").is_file() else None
    root = lifecycle.mirror_root_of(plan) if plan else default_mirror_root()
    report = diagnose(plan, provider=provider, mirror_root=root)
    if as_json:
        console.print_json(report.as_dict())
    else:
        styles = {"ok": "green", "warn": "yellow", "fail": "bold red"}
        for finding in report.findings:
            console.err().print(f"{finding.level:>4}  ", style=styles[finding.level], end="")
            console.err().print(f"{finding.check}: {finding.detail}", markup=False)
            if finding.fix and finding.level != "ok":
                console.err().print(f"      fix: {finding.fix}", style="cyan", markup=False)
    return None if report.ok else ExitCode.MISSING_TOOL


def register(root: click.Group) -> None:
    for command in (up, status, halt, destroy, ssh, doctor):
        root.add_command(command)
