"""Where the nodes of a health, smoke or drill run come from: a lab directory (via Vagrant) or an OpenSSH config file.

A lab's machines that are not running are no SSH targets: they are listed with their Vagrant state (`MachineDown`)
so that health reports them as failing nodes without trying to reach them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from coreos_lab.cluster.ssh import SSHTarget, parse_ssh_config
from coreos_lab.distros import DISTRO_NAMES
from coreos_lab.errors import BadInput, ToolMissing, Unhealthy

if TYPE_CHECKING:
    from coreos_lab.lab.plan import LabPlan
    from coreos_lab.vagrant.adapter import Vagrant


NOT_READY = "not yet ready for SSH"  # Vagrant's words when a machine it is asked about is not created or not running


class LabNotRunning(Unhealthy):
    """No machine of the lab runs (or, from `targets_from_lab`, not every one does)."""


@dataclass(frozen=True)
class MachineDown:
    """A machine of the lab that is not running, in Vagrant's words: poweroff, shutoff, not_created, saved, …"""

    name: str
    state: str


def _vagrant(lab_dir: Path, provider: str | None) -> Vagrant:
    from coreos_lab.vagrant.adapter import Vagrant

    return Vagrant(lab_dir, provider=provider, keep_logs=False, timeout=120)


def vagrant_ssh_config(lab_dir: Path, provider: str | None = None, names: Sequence[str] = ()) -> str:
    """`vagrant ssh-config` of every machine of the lab (or of `names`), through the one Vagrant adapter."""
    from coreos_lab.vagrant.adapter import VagrantFailed

    try:
        return _vagrant(lab_dir, provider).ssh_config(*names)
    except VagrantFailed as exc:
        if NOT_READY in exc.message:
            raise LabNotRunning(
                f"{lab_dir}: the lab's machines are not running", hint=f"run `lab up {lab_dir}`"
            ) from exc
        raise


def targets_from_file(path: Path) -> list[SSHTarget]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise BadInput(f"{path}: cannot read ssh-config: {exc.strerror}") from exc
    return parse_ssh_config(text, source=str(path))


def targets_from_lab(lab_dir: Path, provider: str | None = None, names: Sequence[str] = ()) -> list[SSHTarget]:
    """Every machine of the lab (or those of `names`) as an SSH target; `LabNotRunning` if one of them is not
    running."""
    if not (lab_dir / "Vagrantfile").is_file():
        raise BadInput(f"{lab_dir}: no Vagrantfile here", hint="render the lab first, or pass --ssh-config FILE")
    return parse_ssh_config(vagrant_ssh_config(lab_dir, provider, names), source=f"vagrant ssh-config in {lab_dir}")


def lab_machines(lab_dir: Path, provider: str | None = None) -> tuple[list[SSHTarget], tuple[MachineDown, ...]]:
    """The running machines as SSH targets, and the others with their state; `LabNotRunning` when none runs.

    One `vagrant ssh-config` when every machine runs. When one does not, Vagrant refuses the whole config, so
    `vagrant status` says which run and `vagrant ssh-config` is asked for those only.
    """
    try:
        return targets_from_lab(lab_dir, provider), ()
    except LabNotRunning:
        pass
    try:
        statuses = _vagrant(lab_dir, provider).status()
    except ToolMissing as exc:  # the provider cannot run here, so neither can any machine
        raise LabNotRunning(f"{lab_dir}: the lab's machines are not running ({exc.message})", hint=exc.hint) from exc
    running = [s.name for s in statuses if s.running]
    down = tuple(MachineDown(s.name, s.state) for s in statuses if not s.running)
    if not running:
        states = ", ".join(f"{m.name} {m.state}" for m in down)
        raise LabNotRunning(f"{lab_dir}: the lab's machines are not running ({states})", hint=f"run `lab up {lab_dir}`")
    return targets_from_lab(lab_dir, provider, running), down


@dataclass(frozen=True)
class ClusterTargets:
    """The nodes of a health or smoke run, and what to expect of them."""

    targets: list[SSHTarget]
    distro: str
    members: int | None  # expected etcd members; None: one per node
    etcd_nodes: tuple[str, ...] | None  # the members when the other nodes are proxies; None: not known
    down: tuple[MachineDown, ...] = ()  # a lab's machines that are not running: failing nodes, never asked

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.targets] + [m.name for m in self.down]


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


def cluster_from_lab(plan: LabPlan, *, distro: str | None = None, members: int | None = None) -> ClusterTargets:
    """The machines of a lab, those not running included; its plan gives the distro and the members unless they are
    given. `LabNotRunning` when no machine runs."""
    # No provider named: Vagrant's records name each created machine's, and naming one would make Vagrant insist
    # that it be usable here even when no machine was ever created.
    targets, down = lab_machines(plan.lab_dir)
    return ClusterTargets(targets, distro or plan.distro, members or plan.etcd_members, plan.etcd_nodes, down)
