"""`lab smoke`: up → wait healthy → functional checks → destroy, with a JUnit report."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from coreos_lab.cli.options import check_option, json_option
from coreos_lab.distros import DISTRO_NAMES
from coreos_lab.errors import BadInput

if TYPE_CHECKING:
    from coreos_lab.junit import TestCase
    from coreos_lab.smoke import SmokeResult


@click.command()
@click.argument("lab_dir", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--ssh-config",
    "ssh_config",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Smoke an existing cluster reachable over SSH (no Vagrant; nothing created or destroyed).",
)
@click.option("--nodes", type=click.IntRange(1, 99), help="Machines of a throw-away lab (default 3).")
@click.option("--distro", type=click.Choice(DISTRO_NAMES), help="Distro (throw-away lab; needed with --ssh-config).")
@click.option("--channel", help="Channel of a throw-away lab.")
@click.option("--provider", help="Vagrant provider of a throw-away lab (virtualbox, libvirt).")
@click.option("--members", type=click.IntRange(min=1), help="Expected etcd members (with --ssh-config).")
@check_option("Health checks (repeatable).")
@click.option(
    "--timeout", type=click.FloatRange(min=1), default=900.0, show_default=True, help="Seconds for the whole run."
)
@click.option("--junit", type=click.Path(dir_okay=False, path_type=Path), help="Write a JUnit XML report here.")
@click.option("--keep-on-failure", is_flag=True, help="Leave the machines running when the run fails.")
@json_option
def smoke(
    lab_dir: Path | None,
    ssh_config: Path | None,
    nodes: int | None,
    distro: str | None,
    channel: str | None,
    provider: str | None,
    members: int | None,
    checks: tuple[str, ...],
    timeout: float,
    junit: Path | None,
    keep_on_failure: bool,
    as_json: bool,
) -> int:
    """Bring a cluster up, prove it works, tear it down, report.

    With LAB_DIR, its lab (a lab.yaml is written there if it has none); without, a throw-away lab in a
    temporary directory. With --ssh-config FILE, an existing cluster: health and functional stages only.
    Teardown always runs (Ctrl-C too) unless --keep-on-failure and the run failed.

    Exit 0 when every stage passed; otherwise the code of the first failure (3 unhealthy, 4 missing tool or
    provider, 5 timeout, 130 interrupted).
    """
    from coreos_lab import smoke as core
    from coreos_lab.cluster.health.targets import cluster_from_ssh_config
    from coreos_lab.junit import check_destination

    if junit is not None:
        check_destination(junit)

    if ssh_config is not None:
        cluster = cluster_from_ssh_config(ssh_config, lab_dir=lab_dir, distro=distro, members=members)
        result = core.smoke_ssh(cluster, checks, timeout=timeout, junit=junit, on_case=_show_case)
        return _report(result, as_json, junit)
    if members is not None:
        raise BadInput("--members goes with --ssh-config; a lab's member count comes from its lab.yaml")
    flags = {"nodes": nodes or 3, "distro": distro, "channel": channel, "provider": provider}
    result = core.smoke_lab(
        lab_dir,
        flags={k: v for k, v in flags.items() if v is not None},
        checks=checks,
        timeout=timeout,
        junit=junit,
        keep_on_failure=keep_on_failure,
        on_case=_show_case,
    )
    return _report(result, as_json, junit)


_MARK = {
    "passed": ("PASS", "green"),
    "failed": ("FAIL", "bold red"),
    "error": ("ERROR", "bold red"),
    "skipped": ("SKIP", "dim"),
}


def _show_case(case: TestCase) -> None:
    from coreos_lab import console

    mark, style = _MARK[case.outcome]
    line = f"{mark:5} {case.name} ({case.seconds:.1f}s)" + (f": {case.message}" if case.message else "")
    console.err().print(line, style=style, markup=False)


def _report(result: SmokeResult, as_json: bool, junit: Path | None) -> int:
    from coreos_lab import console

    if as_json:
        console.print_json(result.as_dict())
    if result.passed:
        console.success(result.message)
    else:
        console.error(result.message)
    if junit is not None:
        console.info(f"JUnit report: {junit}")
    if result.kept is not None:
        console.info(f"kept for inspection: {result.kept}")
        console.info(f"  get in:   lab ssh {result.kept} <node>")
        console.info(f"  clean up: lab destroy {result.kept} --force")
    return int(result.exit_code)
