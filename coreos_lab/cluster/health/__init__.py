"""Cluster health over SSH: every node checked concurrently, one report.

Public API (for `lab health`, `lab up` and smoke tests):
- `check_cluster(targets, distro, checks, expected_members) -> HealthReport`
- `wait_healthy(targets, distro, checks, expected_members, timeout, on_update) -> HealthReport`, raising
  `HealthTimeout` (exit 5, carrying the last report) when the deadline passes first. Its time comes from a
  `Clock` (monotonic time and sleep; `SYSTEM_CLOCK` unless another is given).

Both take `down`, a lab's machines that are not running: each is a failing node with its machine state, never
asked over SSH. No wait brings a machine back, so `wait_healthy` then reports one round and raises
`MachinesNotRunning` (exit 3, carrying that report).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from coreos_lab.cluster.health.checks import CHECK_NAMES, CHECKS, CheckContext
from coreos_lab.cluster.health.report import CheckResult, EtcdCluster, HealthReport, NodeReport, Status
from coreos_lab.cluster.health.targets import MachineDown
from coreos_lab.cluster.ssh import (
    DEFAULT_COMMAND_TIMEOUT,
    DEFAULT_CONNECT_TIMEOUT,
    CommandTimeout,
    SSHError,
    SSHSession,
    SSHTarget,
)
from coreos_lab.distros import distro_named
from coreos_lab.errors import BadInput, Timeout, Unhealthy

__all__ = [
    "CHECK_NAMES",
    "SYSTEM_CLOCK",
    "CheckResult",
    "Clock",
    "EtcdCluster",
    "HealthReport",
    "HealthTimeout",
    "MachineDown",
    "MachinesNotRunning",
    "NodeReport",
    "Status",
    "check_cluster",
    "check_node",
    "select_checks",
    "wait_healthy",
]

NodeCallback = Callable[[NodeReport], None]


class Clock(Protocol):
    """Where waiting gets its time: seconds that only go forward, and a way to let them pass."""

    def now(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


SYSTEM_CLOCK: Clock = SystemClock()


class HealthTimeout(Timeout):
    """The deadline passed before the cluster was healthy; `report` is the last round's."""

    def __init__(self, message: str, report: HealthReport):
        super().__init__(message)
        self.report = report


class MachinesNotRunning(Unhealthy):
    """Some of the lab's machines are not running: no wait can make the cluster healthy; `report` says the rest."""

    def __init__(self, report: HealthReport):
        names = ", ".join(f"{n.name} ({n.machine})" for n in report.nodes if n.machine)
        super().__init__(
            f"not healthy: machines not running: {names}", hint="`lab up` starts the machines that are not running"
        )
        self.report = report


def select_checks(distro: str, requested: Iterable[str] = ()) -> tuple[str, ...]:
    """The checks to run, in their canonical order: the requested ones, or all (fleet skips where there is none)."""
    distro_named(distro)  # BadInput naming the choices for any other distro
    wanted = set(requested)
    unknown = sorted(wanted - set(CHECK_NAMES))
    if unknown:
        raise BadInput(f"unknown check {unknown[0]!r}; choose from {', '.join(CHECK_NAMES)}")
    return tuple(c for c in CHECK_NAMES if not wanted or c in wanted)


def check_node(
    target: SSHTarget,
    checks: Sequence[str],
    ctx: CheckContext,
    *,
    connect_timeout: float,
    session: SSHSession | None = None,
) -> NodeReport:
    """Run `checks` on one node over one SSH connection: `session` (left open for the caller's next round), else
    a connection of its own. A lost node fails its checks; it never raises."""
    results: list[CheckResult] = []
    ctx = ctx.for_node(target.name)
    own_session = session is None
    if session is None:
        session = SSHSession(target, connect_timeout=connect_timeout)
    else:
        session.connect_timeout = connect_timeout
    broken: str | None = None
    try:
        for name in checks:
            if broken is not None:
                results.append(CheckResult(name, Status.FAIL, broken))
                continue
            try:
                results.append(CHECKS[name](session, ctx))
            except CommandTimeout as exc:  # this check failed; the connection may serve the next one
                results.append(CheckResult(name, Status.FAIL, exc.message))
            except SSHError as exc:  # the node is gone: the remaining checks fail without trying
                broken = exc.message
                results.append(CheckResult(name, Status.FAIL, broken))
    finally:
        if own_session or broken is not None:
            session.close()  # a broken connection is made anew by the next round
    return NodeReport(target.name, target.address, tuple(results), etcd_cluster=ctx.node.etcd_cluster)


def machine_down(machine: MachineDown, checks: Sequence[str]) -> NodeReport:
    """A machine that is not running fails every check, unasked."""
    why = f"not asked: the machine is {machine.state.replace('_', ' ')}"
    return NodeReport(machine.name, "", tuple(CheckResult(c, Status.FAIL, why) for c in checks), machine=machine.state)


def check_cluster(
    targets: Sequence[SSHTarget],
    distro: str,
    checks: Iterable[str] = (),
    expected_members: int | None = None,
    *,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
    on_node: NodeCallback | None = None,
    etcd_nodes: Collection[str] | None = None,
    sessions: Sequence[SSHSession] | None = None,
    down: Sequence[MachineDown] = (),
) -> HealthReport:
    """Check every node concurrently (one thread per node: paramiko blocks). `expected_members` defaults to
    the number of nodes; `on_node` is called from worker threads as each node's report is ready.
    `etcd_nodes` names the etcd members when the configuration tells them (the other nodes are proxies);
    None: not known, Flatcar nodes are probed. `sessions`: one connection per target, in order, to reuse.
    `down`: machines that are not running, reported after the others as failing nodes."""
    if not targets and not down:
        raise BadInput("no nodes to check")
    selected = select_checks(distro, checks)
    node_count = len(targets) + len(down)
    expected = node_count if expected_members is None else expected_members
    if expected < 1:
        raise BadInput(f"expected etcd members must be at least 1, not {expected}")
    proxies = frozenset(t.name for t in targets if etcd_nodes is not None and t.name not in etcd_nodes)
    ctx = CheckContext(distro, expected, node_count, command_timeout, proxies)
    started = time.monotonic()

    def one(target: SSHTarget, session: SSHSession | None) -> NodeReport:
        report = check_node(target, selected, ctx, connect_timeout=connect_timeout, session=session)
        if on_node is not None:
            on_node(report)
        return report

    with ThreadPoolExecutor(max_workers=max(len(targets), 1), thread_name_prefix="health") as pool:
        nodes = tuple(pool.map(one, targets, sessions if sessions is not None else [None] * len(targets)))
    nodes += tuple(machine_down(m, selected) for m in down)
    return HealthReport(distro, expected, selected, nodes, time.monotonic() - started)


def wait_healthy(
    targets: Sequence[SSHTarget],
    distro: str,
    checks: Iterable[str] = (),
    expected_members: int | None = None,
    *,
    timeout: float,
    on_update: NodeCallback | None = None,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
    first_delay: float = 0.5,
    max_delay: float = 5.0,
    etcd_nodes: Collection[str] | None = None,
    clock: Clock = SYSTEM_CLOCK,
    down: Sequence[MachineDown] = (),
) -> HealthReport:
    """Re-check with exponential backoff until healthy; `HealthTimeout` with the last report at the deadline.

    Connect and command timeouts shrink to the time left, so a round never runs far past the deadline; a round
    that would not fit before it, judged by the last one, is not started: its checks would fail on our own
    shortened timeouts and hide the real failures of the last full round. A round slower than the last may still
    run into the deadline, its failures then perhaps our shortened timeouts': the last round that ended before
    the deadline is reported instead. Each node's connection stays open from round to round: a new one costs a
    key exchange, slow on emulated guests. `clock` times the rounds, the deadline and the pauses between rounds.
    With machines `down`, one round is reported at once (`MachinesNotRunning`): waiting cannot start them.
    """
    checks = tuple(checks)
    deadline = clock.now() + timeout
    delay = first_delay
    sessions = [SSHSession(t, connect_timeout=connect_timeout) for t in targets]
    full: HealthReport | None = None  # the last round that ended before the deadline
    try:
        while True:
            left = max(deadline - clock.now(), 1.0)
            round_started = clock.now()
            report = check_cluster(
                targets,
                distro,
                checks,
                expected_members,
                connect_timeout=min(connect_timeout, left),
                command_timeout=min(command_timeout, left),
                on_node=on_update,
                etcd_nodes=etcd_nodes,
                sessions=sessions,
                down=down,
            )
            if report.healthy:
                return report
            if down:
                raise MachinesNotRunning(report)
            round_seconds = clock.now() - round_started
            left = deadline - clock.now()
            if left > 0 or full is None:
                full = report
            if left <= round_seconds:
                failing = "; ".join(f"{node} {c.name}: {c.detail}" for node, c in full.failing())
                raise HealthTimeout(f"not healthy after {timeout:g}s: {failing}", full)
            clock.sleep(min(delay, left - round_seconds))
            delay = min(delay * 2, max_delay)
    finally:
        for session in sessions:
            session.close()
