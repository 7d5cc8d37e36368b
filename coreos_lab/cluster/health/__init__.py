"""Cluster health over SSH: every node asked concurrently, judged together, one report.

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
from dataclasses import dataclass, field
from typing import Protocol

from coreos_lab.cluster.health import view
from coreos_lab.cluster.health.checks import (
    CHECK_NAMES,
    CHECKS,
    ETCD_CHECKS,
    CheckContext,
    EtcdAnswer,
    ask_endpoints_health,
    ask_etcd,
    etcd_not_running,
    judge_etcd,
    judge_members,
)
from coreos_lab.cluster.health.parsers import ClusterHealth
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


@dataclass
class NodeRound:
    """One node's part of a round: the checks it answered alone, and its etcd's answer, judged once every node
    has answered (`judge_node`)."""

    target: SSHTarget
    ctx: CheckContext
    results: dict[str, CheckResult] = field(default_factory=dict)
    answer: EtcdAnswer | None = None


def _steps(checks: Sequence[str]) -> list[tuple[str, ...]]:
    """The checks in their order, the etcd ones as one step: one exec answers them both."""
    steps: list[tuple[str, ...]] = []
    for name in checks:
        if name not in ETCD_CHECKS:
            steps.append((name,))
        elif not any(step[0] in ETCD_CHECKS for step in steps):
            steps.append(tuple(c for c in checks if c in ETCD_CHECKS))
    return steps


def ask_node(target: SSHTarget, checks: Sequence[str], ctx: CheckContext, session: SSHSession) -> NodeRound:
    """Run `checks` on one node over its connection (left open for the probe and the caller's next round; a
    broken one is closed, to be made anew). A lost node fails its checks; it never raises."""
    node = NodeRound(target, ctx.for_node(target.name))
    broken: str | None = None
    for step in _steps(checks):
        if broken is not None:
            node.results.update((c, CheckResult(c, Status.FAIL, broken)) for c in step)
            continue
        try:
            if step[0] not in ETCD_CHECKS:
                node.results[step[0]] = CHECKS[step[0]](session, node.ctx)
            elif node.ctx.node.etcd_unit_down:
                node.results.update((c, etcd_not_running(c, node.ctx)) for c in step)
            else:
                node.answer = ask_etcd(session, node.ctx, step)
        except CommandTimeout as exc:  # this step failed; the connection may serve the next one
            node.results.update((c, CheckResult(c, Status.FAIL, exc.message)) for c in step)
        except SSHError as exc:  # the node is gone: the remaining checks fail without trying
            broken = exc.message
            node.results.update((c, CheckResult(c, Status.FAIL, broken)) for c in step)
    if broken is not None:
        session.close()
    return node


def judge_node(node: NodeRound, checks: Sequence[str], cluster: ClusterHealth | None) -> NodeReport:
    """The node's report, its etcd checks judged from its answer (and, for a v3 member, the members' combined)."""
    results = []
    verdict: EtcdCluster | None = None
    for name in checks:
        result = node.results.get(name)
        if result is None and node.answer is not None:
            if name == "etcd":
                result, verdict = judge_etcd(node.answer, cluster)
            else:
                result = judge_members(node.answer, node.ctx)
        assert result is not None
        results.append(result)
    if "etcd" in checks and node.ctx.node.etcd_unit_down:
        verdict = EtcdCluster.UNAVAILABLE  # nothing serves here; other nodes may know better
    target = node.target
    return NodeReport(target.name, target.address, tuple(results), etcd_cluster=verdict)


def combine(nodes: Sequence[NodeRound], sessions: Sequence[SSHSession], ctx: CheckContext) -> ClusterHealth | None:
    """The cluster's health from what the v3 members said of themselves, the silent ones asked from one node
    (`view.py`); None when no node answered as a v3 member."""
    answers = [n.answer for n in nodes]
    gathered = view.gather(answers)
    if gathered is None:
        return None
    probed = None
    if gathered.unanswered and (asker := view.prober(answers)) is not None:
        probed = ask_endpoints_health(sessions[asker], gathered.unanswered, ctx)
    return view.cluster_health(gathered, probed)


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
    """Ask every node concurrently (one thread per node: paramiko blocks), then judge each one's etcd checks on
    what all of them answered. `expected_members` defaults to the number of nodes; `on_node` is called with
    each node's report, in order, once they are judged. `etcd_nodes` names the etcd members when the
    configuration tells them (the other nodes are proxies); None: not known, Flatcar nodes are probed.
    `sessions`: one connection per target, in order, to reuse (else the round's own, closed at its end).
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
    own_sessions = sessions is None
    sessions = [SSHSession(t) for t in targets] if sessions is None else sessions
    for session in sessions:
        session.connect_timeout = connect_timeout
    try:
        with ThreadPoolExecutor(max_workers=max(len(targets), 1), thread_name_prefix="health") as pool:
            asked = list(pool.map(lambda t, s: ask_node(t, selected, ctx, s), targets, sessions))
        cluster = combine(asked, sessions, ctx)
    finally:
        if own_sessions:
            for session in sessions:
                session.close()
    nodes = []
    for node in asked:
        nodes.append(report := judge_node(node, selected, cluster))
        if on_node is not None:
            on_node(report)
    nodes += [machine_down(m, selected) for m in down]
    return HealthReport(distro, expected, selected, tuple(nodes), time.monotonic() - started)


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
    max_delay: float = 2.0,
    etcd_nodes: Collection[str] | None = None,
    clock: Clock = SYSTEM_CLOCK,
    down: Sequence[MachineDown] = (),
) -> HealthReport:
    """Re-check with exponential backoff until healthy; `HealthTimeout` with the last report at the deadline.

    The pause between rounds grows to `max_delay`, no more: a cluster that became healthy is seen at most that
    long after (a user's loop of `vagrant ssh … etcdctl` probes back to back), and a round costs each node only
    a few etcdctl calls.

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
