"""Where the nodes of a health or smoke run come from: a lab directory (via Vagrant) or an OpenSSH config file."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from coreos_lab.cluster.ssh import SSHTarget, parse_ssh_config
from coreos_lab.distros import DISTRO_NAMES
from coreos_lab.errors import BadInput, Unhealthy

if TYPE_CHECKING:
    from coreos_lab.lab.plan import LabPlan


def vagrant_ssh_config(lab_dir: Path, provider: str | None = None) -> str:
    """`vagrant ssh-config` of every machine of the lab, through the one Vagrant adapter."""
    from coreos_lab.vagrant.adapter import Vagrant, VagrantFailed

    try:
        return Vagrant(lab_dir, provider=provider, keep_logs=False, timeout=120).ssh_config()
    except VagrantFailed as exc:
        if "not yet ready for SSH" in exc.message:  # Vagrant's words for a machine not created or not running
            raise Unhealthy(f"{lab_dir}: the lab's machines are not running", hint=f"run `lab up {lab_dir}`") from exc
        raise


def targets_from_file(path: Path) -> list[SSHTarget]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise BadInput(f"{path}: cannot read ssh-config: {exc.strerror}") from exc
    return parse_ssh_config(text, source=str(path))


def targets_from_lab(lab_dir: Path, provider: str | None = None) -> list[SSHTarget]:
    if not (lab_dir / "Vagrantfile").is_file():
        raise BadInput(f"{lab_dir}: no Vagrantfile here", hint="render the lab first, or pass --ssh-config FILE")
    return parse_ssh_config(vagrant_ssh_config(lab_dir, provider), source=f"vagrant ssh-config in {lab_dir}")


@dataclass(frozen=True)
class ClusterTargets:
    """The nodes of a health or smoke run, and what to expect of them."""

    targets: list[SSHTarget]
    distro: str
    members: int | None  # expected etcd members; None: one per node
    etcd_nodes: tuple[str, ...] | None  # the members when the other nodes are proxies; None: not known


def cluster_from_ssh_config(
    ssh_config: Path, *, lab_dir: Path | None, distro: str | None, members: int | None, proxies: Sequence[str] = ()
) -> ClusterTargets:
    """The nodes of `--ssh-config FILE`, an existing cluster that is no lab: for `lab health` and `lab smoke` alike.

    A lab directory cannot come with it, and the distro must: there is no lab.yaml to say it. `proxies` are Hosts
    that run etcd as a proxy; the other Hosts are the members, as many as expected unless `members` says.
    """
    if lab_dir is not None:
        raise BadInput("give either a lab directory or --ssh-config, not both")
    if distro is None:
        raise BadInput(f"--ssh-config needs --distro ({' or '.join(DISTRO_NAMES)})")
    targets = targets_from_file(ssh_config)
    names = [t.name for t in targets]
    unknown = [p for p in proxies if p not in names]
    if unknown:
        raise BadInput(f"--proxy {unknown[0]}: no such Host in {ssh_config} (hosts: {', '.join(names)})")
    etcd_nodes = tuple(n for n in names if n not in proxies) if proxies else None
    return ClusterTargets(targets, distro, members or (len(etcd_nodes) if etcd_nodes else None), etcd_nodes)


def cluster_from_lab(plan: LabPlan, *, distro: str | None, members: int | None) -> ClusterTargets:
    """The machines of a lab; its plan gives the distro and the members unless they are given."""
    targets = targets_from_lab(plan.lab_dir)
    return ClusterTargets(targets, distro or plan.distro, members or plan.etcd_members, plan.etcd_nodes)
