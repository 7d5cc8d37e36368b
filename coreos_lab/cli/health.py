"""`lab health`: etcd and fleet health of every node over SSH."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

import click

from coreos_lab.cli.options import check_option, json_option
from coreos_lab.distros import DISTRO_NAMES
from coreos_lab.errors import BadInput, ExitCode

if TYPE_CHECKING:
    from rich.table import Table

    from coreos_lab.cluster.health import HealthReport, NodeReport


@click.command()
@click.argument("lab_dir", required=False, type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option(
    "--ssh-config",
    "ssh_config",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="OpenSSH config of the nodes (instead of a lab's `vagrant ssh-config`).",
)
@click.option("--distro", type=click.Choice(DISTRO_NAMES), help="Distro of the nodes (default: the lab's).")
@click.option(
    "--members",
    type=click.IntRange(min=1),
    help="Expected etcd members (default: the lab's etcd.members; with --ssh-config, the hosts that are no --proxy).",
)
@click.option(
    "--proxy",
    "proxies",
    multiple=True,
    metavar="HOST",
    help="With --ssh-config: a Host that runs etcd as a proxy (repeatable; a lab's configuration says so itself). "
    "Flatcar proxies are then asked in v2 right away instead of waiting out a v3 probe.",
)
@check_option("Run only this check (repeatable). Default: all for the distro.")
@click.option("--wait", "wait", type=click.FloatRange(min=0), help="Re-check until healthy, for up to SECONDS.")
@click.option("--connect-timeout", type=click.FloatRange(min=0.1), default=10.0, show_default=True, help="Seconds.")
@json_option
def health(
    lab_dir: Path | None,
    ssh_config: Path | None,
    distro: str | None,
    members: int | None,
    proxies: tuple[str, ...],
    checks: tuple[str, ...],
    wait: float | None,
    connect_timeout: float,
    as_json: bool,
) -> int:
    """Check etcd (and fleet, units) on every node of LAB_DIR (default: .) or of --ssh-config FILE.

    A lab's machines that are not running fail with their state, unasked; the others are checked. etcd's own
    verdict on the cluster is shown: healthy, degraded (a member down, still a leader and writes) or unavailable
    (no quorum).

    Exit 0 when healthy, 3 when not (at once with machines not running, --wait or not), 5 when --wait's deadline
    passed first.
    """
    from coreos_lab import console
    from coreos_lab.cluster.health import HealthTimeout, MachinesNotRunning, check_cluster, wait_healthy
    from coreos_lab.cluster.health.targets import cluster_from_lab, cluster_from_ssh_config

    if ssh_config is not None:
        cluster = cluster_from_ssh_config(ssh_config, lab_dir=lab_dir, distro=distro, members=members, proxies=proxies)
    elif proxies:
        raise BadInput("--proxy goes with --ssh-config; a lab's configuration names its proxies itself")
    else:
        from coreos_lab.lab.plan import load_plan  # a lab's configuration: not needed with --ssh-config

        cluster = cluster_from_lab(load_plan(lab_dir or Path(".")), distro=distro, members=members)
    targets = cluster.targets

    if wait is None:
        output = _load_output_modules()
        report = check_cluster(
            targets,
            cluster.distro,
            checks,
            cluster.members,
            connect_timeout=connect_timeout,
            etcd_nodes=cluster.etcd_nodes,
            down=cluster.down,
        )
        code = ExitCode.OK if report.healthy else ExitCode.UNHEALTHY
        output.join()
    else:
        from rich.text import Text

        from coreos_lab.cli.live import NodeStates

        names = [t.name for t in targets]
        live = console.stderr_is_terminal()
        try:
            with NodeStates(names, ("node", "state"), ("checking…",), live=live, transient=True) as states:

                def on_update(node: NodeReport) -> None:
                    state = "healthy" if node.healthy else "; ".join(f"{c.name}: {c.detail}" for c in node.failing)
                    cell = Text(state, style="green" if node.healthy else "yellow")
                    states.update(node.name, (cell,), change=state, line=f"{node.name}: {state}")

                report = wait_healthy(
                    targets,
                    cluster.distro,
                    checks,
                    cluster.members,
                    timeout=wait,
                    on_update=on_update,
                    connect_timeout=connect_timeout,
                    etcd_nodes=cluster.etcd_nodes,
                    down=cluster.down,
                )
            code = ExitCode.OK
        except HealthTimeout as exc:
            report, code = exc.report, ExitCode.TIMEOUT
            console.error(f"deadline of {wait:g}s passed before the cluster was healthy")
        except MachinesNotRunning as exc:
            report, code = exc.report, ExitCode.UNHEALTHY
            console.error(f"not waiting: {exc.message.removeprefix('not healthy: ')}")

    if as_json:
        console.print_json(report.as_dict())
    else:
        console.err().print(_table(report))
    # The failing checks go to stderr in both modes: exit 3 or 5 always says which node and check.
    for node, check in report.failing():
        console.info(f"{node} {check.name}: {check.detail}")
    if report.etcd_cluster is not None and report.etcd_cluster != "healthy":
        console.info(f"etcd says the cluster is {report.etcd_cluster}: {report.etcd_cluster.meaning}")
    if report.healthy:
        console.success(f"healthy: {len(report.nodes)} nodes ({report.elapsed:.1f}s)")
    else:
        console.error(f"not healthy: {len(report.failing())} failing checks")
    return code


_STYLE = {"pass": "green", "fail": "bold red", "skip": "dim"}


def _load_output_modules() -> threading.Thread:
    """Import rich, which prints the report, while the nodes are asked: a round mostly waits on them, so the
    imports (tens of ms of CPU) come off the command's critical path."""

    def load() -> None:
        import rich.console
        import rich.table
        import rich.text  # noqa: F401

    thread = threading.Thread(target=load, name="health-output", daemon=True)
    thread.start()
    return thread


def _table(report: HealthReport) -> Table:
    from rich.table import Table
    from rich.text import Text

    verdict = report.etcd_cluster
    caption = f"etcd: cluster {verdict} ({verdict.meaning})" if verdict is not None else None
    table = Table(box=None, pad_edge=False, caption=caption, caption_justify="left")
    machines = any(n.machine for n in report.nodes)  # a lab with machines not running: say which
    table.add_column("node")
    if machines:
        table.add_column("machine")
    table.add_column("address")
    for name in report.checks:
        table.add_column(name)
    for node in report.nodes:
        cells = []
        for name in report.checks:
            check = node.check(name)
            status = check.status.value if check else "-"
            if name == "etcd" and node.etcd_cluster not in (None, "healthy"):
                status += f" ({node.etcd_cluster})"  # what this node's etcd says: a cut-off node differs
            cells.append(Text(status, style=_STYLE.get(status.split()[0], "")))
        machine = [Text((node.machine or "running").replace("_", " "))] if machines else []
        table.add_row(Text(node.name), *machine, Text(node.address or "-"), *cells)
    return table
