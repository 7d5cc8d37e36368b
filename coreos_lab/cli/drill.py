"""`lab drill`: failure drills on a running lab, or on any cluster an OpenSSH config describes."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from coreos_lab.cli.options import json_option, split_dir
from coreos_lab.distros import DISTRO_NAMES
from coreos_lab.errors import BadInput

if TYPE_CHECKING:
    from coreos_lab.drill import DrillCluster, Step


@click.group()
def drill() -> None:
    """Practise failure on a running cluster: machines and etcd members down, nodes cut off, quorum lost.

    Each drill takes a lab ([DIR], default .) or any cluster an OpenSSH config describes (--ssh-config FILE
    --distro D). Bad input (an unknown node, a lab not up, a partition of every node) is refused before anything
    is touched.

    \b
    Partitions (the host still reaches the node over SSH):
      on a lab        the provider's link control: the private NIC's cable out
                      (VirtualBox: VBoxManage controlvm VM setlinkstate2 off;
                      libvirt: virsh domif-setlink DOMAIN MAC down, on every
                      NIC but the management network's)
      --ssh-config    packet filtering in the guest, over SSH: an iptables
                      chain LAB-DRILL drops the other hosts' addresses
    """


def cluster_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--ssh-config, --distro and --proxy, as `lab health` takes them."""
    func = click.option(
        "--proxy", "proxies", multiple=True, metavar="HOST", help="With --ssh-config: a Host running an etcd proxy."
    )(func)
    func = click.option("--distro", type=click.Choice(DISTRO_NAMES), help="Distro of the nodes (with --ssh-config).")(
        func
    )
    return click.option(
        "--ssh-config",
        "ssh_config",
        type=click.Path(dir_okay=False, exists=True, path_type=Path),
        help="OpenSSH config of the nodes: a cluster that is no lab.",
    )(func)


def _cluster(
    lab_dir: Path | None, ssh_config: Path | None, distro: str | None, proxies: tuple[str, ...]
) -> DrillCluster:
    from coreos_lab.cluster.health.targets import cluster_from_ssh_config
    from coreos_lab.drill import DrillCluster, lab_cluster
    from coreos_lab.lab.plan import load_plan

    if ssh_config is not None:
        cluster = cluster_from_ssh_config(ssh_config, lab_dir=lab_dir, distro=distro, members=None, proxies=proxies)
        return DrillCluster(cluster)
    if proxies or distro:
        raise BadInput("--distro and --proxy go with --ssh-config; a lab's lab.yaml says both")
    return lab_cluster(load_plan((lab_dir or Path.cwd()).resolve()))


def _fault(name: str, summary: str, metavar: str) -> click.Command:
    @click.command(name=name, help=summary)
    @click.argument("words", nargs=-1, metavar=metavar)
    @cluster_options
    @json_option
    def command(
        words: tuple[str, ...], ssh_config: Path | None, distro: str | None, proxies: tuple[str, ...], as_json: bool
    ) -> None:
        from coreos_lab import console
        from coreos_lab.drill import FAULTS

        lab_dir, nodes = (None, list(words)) if ssh_config else split_dir(words)
        result = FAULTS[name](_cluster(lab_dir, ssh_config, distro, proxies), nodes)
        if as_json:
            console.print_json(result.as_dict())
            return
        for action in result.actions:
            console.success(action)

    return command


for _name, _summary, _metavar in (
    ("stop", "Halt NODE's machine (vagrant halt; a lab only).", "[DIR] NODE"),
    (
        "start",
        "Boot NODE's machine if it is not running (vagrant up), else start its etcd unit (undoes kill-etcd).",
        "[DIR] NODE",
    ),
    ("kill-etcd", "Stop only NODE's etcd unit (etcd2 on CoreOS, etcd-member on Flatcar) with systemctl.", "[DIR] NODE"),
    (
        "partition",
        "Cut each NODE off from the other nodes on the private network, SSH from the host kept: on a lab by the "
        "provider's link control (VirtualBox setlinkstate2, libvirt domif-setlink), with --ssh-config by iptables "
        "in the guest (chain LAB-DRILL).",
        "[DIR] NODE…",
    ),
    (
        "heal",
        "Give the NODEs named (default: every running node) their private network back: the link plugged in, or "
        "the LAB-DRILL chain deleted.",
        "[DIR] [NODE]…",
    ),
):
    drill.add_command(_fault(_name, _summary, _metavar))


@drill.command()
@click.argument("lab_dir", required=False, metavar="[DIR]", type=click.Path(file_okay=False, path_type=Path))
@cluster_options
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=120.0,
    show_default=True,
    help="Seconds each step may wait for etcd to settle into what it promises.",
)
@click.option("--junit", type=click.Path(dir_okay=False, path_type=Path), help="Write a JUnit XML report here.")
@json_option
def quorum(
    lab_dir: Path | None,
    ssh_config: Path | None,
    distro: str | None,
    proxies: tuple[str, ...],
    timeout: float,
    junit: Path | None,
    as_json: bool,
) -> int:
    """Lose and regain quorum on purpose, and check that etcd behaves as it promises.

    \b
    1. healthy
    2. one member down (its etcd unit stopped): degraded
    3. a write through a surviving member is accepted
    4. a majority down: unavailable
    5. a write is refused or times out
    6. every member started again: healthy
    7. the first write is readable on the member that was down when it was written

    Needs at least 3 etcd members, all running. Each step prints what was expected and what was observed. Every
    fault is undone at the end, Ctrl-C and SIGTERM included. Exit 0 when every step behaved as etcd promises,
    3 when one did not, 130 when interrupted, 1 when a fault could not be undone.
    """
    from coreos_lab import console
    from coreos_lab.drill import run_quorum

    if junit is not None:
        _check_report_path(junit)
    result = run_quorum(_cluster(lab_dir, ssh_config, distro, proxies), timeout=timeout, junit=junit, on_step=_show)
    if as_json:
        console.print_json(result.as_dict())
    for line in result.undone:
        console.info(f"undone: {line}")
    if result.passed:
        console.success(result.message)
    else:
        console.error(result.message)
    if junit is not None:
        console.info(f"JUnit report: {junit}")
    return int(result.exit_code)


def _check_report_path(path: Path) -> None:
    """Before the drill, not after it: a report that cannot be written must not cost a finished drill."""
    parent = path.parent
    if not parent.is_dir():
        raise BadInput(f"--junit {path}: no directory {parent}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise BadInput(f"--junit {path}: directory {parent} is not writable")


_MARK = {"passed": ("PASS", "green"), "failed": ("FAIL", "bold red"), "error": ("ERROR", "bold red")}


def _show(step: Step) -> None:
    from coreos_lab import console

    mark, style = _MARK.get(step.outcome, ("SKIP", "dim"))
    console.err().print(f"{mark:5} {step.name} ({step.seconds:.1f}s)", style=style, markup=False)
    console.info(f"      expected: {step.expected}")
    console.info(f"      observed: {step.observed}")
