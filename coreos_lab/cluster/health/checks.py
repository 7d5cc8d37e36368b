"""The checks run on each node over SSH, per distro (docs/field-notes.md §4).

- units: the distro's units active, one `systemctl is-active` each (with several units it exits 0 if *any*
  is active). When it finds the etcd unit stopped, the etcd checks of that node skip (etcdctl would only wait
  out its dial timeout) and say why; the node is unhealthy through the units check.
- etcd and members are asked together, in one exec per node (`ask_etcd`), and judged from the answers
  (`judge_etcd`, `judge_members`):
  - CoreOS, and a Flatcar machine that runs etcd as a v2 proxy (no v3 API): v2 `cluster-health` — the
    cluster as this node probes it (verdict from the member lines, since etcd2 says "cluster is healthy" if
    any member is) — and v2 `member list`.
  - a Flatcar member answers for itself only: v3 `endpoint status` (its id and leader), `member list` and
    `endpoint health` of its own endpoint. Its etcd check is judged on the cluster's health combined from every
    member's answer (`view.py`): N questions for N members, not N².
- members: as many members as expected, all started, and a leader.
- fleet (CoreOS): `fleetctl list-machines` sees every node.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field, replace

from coreos_lab.cluster.health import parsers
from coreos_lab.cluster.health.report import CheckResult, EtcdCluster, Status
from coreos_lab.cluster.ssh import DEFAULT_COMMAND_TIMEOUT, Command, SSHError, SSHSession
from coreos_lab.distros import DISTROS
from coreos_lab.proc import CommandResult

CHECK_NAMES = ("units", "etcd", "members", "fleet")
_V2 = {"ETCDCTL_API": "2"}
_V3 = {"ETCDCTL_API": "3"}
_V3_DIAL = "3s"  # etcdctl's default dial timeout is 2 s; a loaded lab VM may need a little longer
_V3_PROBE_DIAL, _V3_PROBE_COMMAND = "2s", "3s"  # for the local member only: no raft round, no other machine
# `systemctl is-active` states of a unit that is not running (yet). Anything else — active, or no systemctl
# at all — leaves the etcd checks to find out for themselves.
_STOPPED_STATES = frozenset({"inactive", "failed", "activating", "deactivating"})


@dataclass
class NodeFacts:
    """What the lab says of a node, and what one check learned about it that the next can use."""

    etcd_unit_down: str = ""  # the units check found the etcd unit stopped: "etcd-member is inactive"
    known_proxy: bool = False  # the lab's configuration says so: no need to probe for the v3 API


@dataclass(frozen=True)
class CheckContext:
    distro: str
    expected_members: int
    node_count: int
    command_timeout: float = DEFAULT_COMMAND_TIMEOUT
    proxies: frozenset[str] = frozenset()  # nodes known to run etcd as a proxy (from the lab's configuration)
    node: NodeFacts = field(default_factory=NodeFacts)  # one per node: see `for_node`

    def for_node(self, name: str) -> CheckContext:
        proxy = name in self.proxies
        return replace(self, node=NodeFacts(known_proxy=proxy))


Check = Callable[[SSHSession, CheckContext], CheckResult]
ETCD_CHECKS = ("etcd", "members")  # asked together (`ask_etcd`), judged once every node has answered


def _pass(name: str, detail: str) -> CheckResult:
    return CheckResult(name, Status.PASS, detail)


def _fail(name: str, detail: str) -> CheckResult:
    return CheckResult(name, Status.FAIL, detail)


def check_units(session: SSHSession, ctx: CheckContext) -> CheckResult:
    states: list[tuple[str, str]] = []
    for unit in DISTROS[ctx.distro].units:
        result = session.run(["systemctl", "is-active", unit], timeout=ctx.command_timeout)
        state = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
        states.append((unit, state or (result.stderr.strip().splitlines() or ["unknown"])[-1]))
    detail = ", ".join(f"{unit}: {state}" for unit, state in states)
    ok = all(state == "active" for _, state in states)
    etcd_unit, etcd_state = states[0]
    if etcd_state in _STOPPED_STATES:
        ctx.node.etcd_unit_down = f"{etcd_unit} is {etcd_state}"
    return _pass("units", detail) if ok else _fail("units", detail)


@dataclass(frozen=True)
class EtcdAnswer:
    """What one node's etcd answered, in one exec (two when a Flatcar machine turns out to be a v2 proxy).

    `own` set: a v3 member that answered for itself — `health` is its own endpoint's (one line, or why not).
    `own` None: `health` is the cluster as this node probed it (v2 `cluster-health`), or why etcd did not answer.
    """

    health: parsers.ClusterHealth | None  # None: the etcd check was not asked for
    listing: parsers.EtcdMemberList | None  # None: neither was the members check
    leader: parsers.EtcdMember | None = None
    own: parsers.EndpointStatus | None = None
    note: str = ""  # how the node was asked, when it was no plain member: "(etcd proxy: asked in v2)"

    @property
    def own_healthy(self) -> bool:
        return self.own is not None and self.health is not None and self.health.healthy


def _v2_answer(session: SSHSession, ctx: CheckContext, etcd: bool, members: bool, note: str = "") -> EtcdAnswer:
    """v2 `cluster-health` (this node probes every member) and `member list` (which names the leader)."""
    health_argv, list_argv = ["etcdctl", "cluster-health"], ["etcdctl", "member", "list"]
    asked: list[Command] = [(argv, _V2) for argv, wanted in ((health_argv, etcd), (list_argv, members)) if wanted]
    results = iter(session.run_each(asked, timeout=ctx.command_timeout))
    health = parsers.parse_v2_cluster_health(*_outputs(next(results, None))) if etcd else None
    listing = parsers.parse_v2_member_list(*_outputs(next(results, None))) if members else None
    return EtcdAnswer(health, listing, listing.leader if listing else None, note=note)


def _outputs(result: CommandResult | None) -> tuple[str, str]:
    """stdout and stderr of a command of a `run_each`; a command that did not run says so."""
    if result is None:
        return "", "no answer: the command did not run"
    return result.stdout, result.stderr


def _v3_answer(session: SSHSession, ctx: CheckContext, etcd: bool) -> tuple[EtcdAnswer | None, str]:
    """A v3 member's answer for itself, its questions asked at once: `endpoint status` (its id and leader),
    `member list` and the health of its own endpoint (a linearizable read: true only with a leader and a quorum).
    None and why, when the status did not answer (a v2 proxy has no v3 API: its status fails at the probe's
    dial timeout, the other two at theirs)."""
    probe = ["etcdctl", "--dial-timeout", _V3_PROBE_DIAL, "--command-timeout", _V3_PROBE_COMMAND]
    dial = ["etcdctl", "--dial-timeout", _V3_DIAL]
    asked: list[Command] = [([*probe, "endpoint", "status", "-w", "json"], _V3)]
    asked.append(([*dial, "member", "list", "-w", "json"], _V3))
    if etcd:
        asked.append(([*dial, "endpoint", "health", "-w", "json"], _V3))
    results = iter(session.run_each(asked, timeout=ctx.command_timeout, at_once=True))
    status, listed, health_result = next(results, None), next(results, None), next(results, None)
    statuses = parsers.parse_v3_endpoint_status_json(status.stdout) if status else []
    if not statuses:
        why = parsers.first_error_line(status.stderr) if status else None
        return None, why or (f"etcdctl exit {status.returncode}" if status else "no answer")
    own = statuses[0]
    listing = parsers.parse_v3_member_list_json(*_outputs(listed))
    leader = next((m for m in listing.members if m.id == own.leader_id), None)
    health = _v3_health(*_outputs(health_result)) if etcd else None
    return EtcdAnswer(health, listing, leader, own=own), ""


def ask_etcd(session: SSHSession, ctx: CheckContext, checks: Collection[str]) -> EtcdAnswer:
    """Ask this node's etcd what the selected etcd checks need, in one exec."""
    etcd, members = "etcd" in checks, "members" in checks
    if DISTROS[ctx.distro].etcd_api == 2:
        return _v2_answer(session, ctx, etcd, members)
    if ctx.node.known_proxy:
        # A v3 probe of a proxy would wait out its whole dial timeout (~2 s) to learn what the lab already says.
        return _v2_answer(session, ctx, etcd, members, note=" (etcd proxy: asked in v2)")
    answer, why = _v3_answer(session, ctx, etcd)
    if answer is not None:
        return answer
    # A Flatcar machine that is no etcd member runs a v2 proxy, which has no v3 API: ask it in v2.
    v2 = _v2_answer(session, ctx, etcd, members)
    answered = v2.health.error is None if v2.health is not None else v2.listing is not None and not v2.listing.error
    if answered:
        return replace(v2, note=" (local etcd answers v2 only: a proxy)")
    return replace(v2, health=parsers.ClusterHealth(error=why) if etcd else None)


def ask_endpoints_health(
    session: SSHSession, members: Sequence[parsers.EtcdMember], ctx: CheckContext
) -> parsers.ClusterHealth:
    """`endpoint health` of the members that did not answer for themselves, from one node, in one command."""
    urls = ",".join(m.client_urls[0] for m in members)
    argv = ["etcdctl", "--dial-timeout", _V3_DIAL, "endpoint", "health", "--endpoints", urls, "-w", "json"]
    try:
        result = session.run(argv, env=_V3, timeout=ctx.command_timeout)
    except SSHError as exc:  # a timeout too
        return parsers.ClusterHealth(error=exc.message)
    return _v3_health(result.stdout, result.stderr)


def _v3_health(stdout: str, stderr: str) -> parsers.ClusterHealth:
    """`endpoint health -w json`; an etcdctl without -w json support prints its plain lines on stderr."""
    health = parsers.parse_v3_endpoint_health_json(stdout, stderr)
    if not health.members:
        lines = parsers.parse_v3_endpoint_health_lines(stderr)
        health = lines if lines.members else health
    return health


def etcd_not_running(name: str, ctx: CheckContext) -> CheckResult:
    """With the etcd unit known to be stopped, etcdctl would only wait out its dial timeout (2-3 s): say so."""
    return CheckResult(name, Status.SKIP, f"not asked: {ctx.node.etcd_unit_down}")


def judge_health(health: parsers.ClusterHealth, note: str = "") -> CheckResult:
    """The etcd check from the cluster's health, as one node probed it or as the members' answers combine."""
    if health.error is not None:
        return _fail("etcd", f"etcd not answering{note}: {health.error}")
    total = len(health.members)
    bad = health.unhealthy_members
    if not bad:
        return _pass("etcd", f"{total} of {total} members healthy{note}")
    named = "; ".join(f"{m.url or m.member} {m.detail}".strip() for m in bad)
    if health.summary == "healthy":  # etcd2 (≤ 3.2) says so as soon as any member is
        verdict = "etcdctl says healthy but not every member is"
    else:
        verdict = f"cluster is {health.verdict}"
    return _fail("etcd", f"{verdict}: {total - len(bad)} of {total} healthy; not healthy: {named}{note}")


def judge_etcd(answer: EtcdAnswer, cluster: parsers.ClusterHealth | None) -> tuple[CheckResult, EtcdCluster]:
    """The etcd check of one node and the cluster as etcd sees it from there. `cluster`: the members' answers
    combined (`view.cluster_health`), for a v3 member that answered for itself."""
    assert answer.health is not None
    if answer.own is None or answer.health.error is not None or cluster is None:
        return judge_health(answer.health, answer.note), answer.health.verdict
    if answer.own_healthy or not any(m.healthy for m in cluster.members):
        return judge_health(cluster), cluster.verdict
    # This member has no leader or no quorum, while others answer: cut off, it serves no reads or writes from
    # here (as `cluster-health` would show from here: unavailable), and the others carry on without it.
    mine = next((m for m in cluster.members if m.member == answer.own.member_id), None)
    why = f"{mine.url} {mine.detail}".strip() if mine else f"member {answer.own.member_id} not healthy"
    healthy = sum(m.healthy for m in cluster.members)
    detail = (
        f"cluster is unavailable from here: {why}; the other members see {healthy} of {len(cluster.members)} healthy"
    )
    return _fail("etcd", detail), EtcdCluster.UNAVAILABLE


def judge_members(answer: EtcdAnswer, ctx: CheckContext) -> CheckResult:
    listing, leader = answer.listing, answer.leader
    assert listing is not None
    if listing.error is not None:
        return _fail("members", f"cannot list members: {listing.error}")
    names = ", ".join(sorted(m.name or f"{m.id} (unstarted)" for m in listing.members))
    count = len(listing.members)
    problems = []
    if count != ctx.expected_members:
        problems.append(f"{count} members, expected {ctx.expected_members}")
    unstarted = [m.id for m in listing.members if not m.started]
    if unstarted:
        problems.append(f"not started: {', '.join(unstarted)}")
    if leader is None:
        problems.append("no leader")
    if problems:
        return _fail("members", f"{'; '.join(problems)} ({names})")
    return _pass("members", f"{count} members ({names}), leader {leader.name if leader else '?'}")


def check_fleet(session: SSHSession, ctx: CheckContext) -> CheckResult:
    if not DISTROS[ctx.distro].fleet:
        return CheckResult("fleet", Status.SKIP, f"fleet does not run on {ctx.distro}")
    result = session.run(["fleetctl", "list-machines", "--no-legend", "--full"], timeout=ctx.command_timeout)
    if result.returncode != 0:
        why = parsers.fleet_error(result.stdout, result.stderr) or f"exit {result.returncode}"
        return _fail("fleet", f"fleetctl failed: {why}")
    machines = parsers.parse_fleet_machines(result.stdout)
    ips = ", ".join(m.ip for m in machines)
    if len(machines) < ctx.node_count:
        return _fail("fleet", f"fleet sees {len(machines)} of {ctx.node_count} machines ({ips})")
    return _pass("fleet", f"{len(machines)} machines ({ips})")


CHECKS: dict[str, Check] = {  # the checks a node answers alone, each with its own commands
    "units": check_units,
    "fleet": check_fleet,
}
