"""The checks run on each node over SSH, per distro (docs/field-notes.md §4).

- units: the distro's units active, one `systemctl is-active` each (with several units it exits 0 if *any*
  is active). When it finds the etcd unit stopped, the etcd checks of that node skip (etcdctl would only wait
  out its dial timeout) and say why; the node is unhealthy through the units check.
- etcd: the cluster's health as this node sees it — v2 `cluster-health` on CoreOS (verdict from the member
  lines, since etcd2 says "cluster is healthy" if any member is), v3 `endpoint health --cluster -w json` on
  Flatcar (v2 on a Flatcar machine that runs etcd as a v2 proxy: the proxy has no v3 API).
- members: as many members as expected, all started, and a leader.
- fleet (CoreOS): `fleetctl list-machines` sees every node.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from coreos_lab.cluster.health import parsers
from coreos_lab.cluster.health.report import CheckResult, EtcdCluster, Status
from coreos_lab.cluster.ssh import DEFAULT_COMMAND_TIMEOUT, SSHSession
from coreos_lab.distros import DISTROS

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
    """What one check learned about a node that the next can use."""

    v2_only: bool = False  # local etcd has no v3 API (a Flatcar machine running etcd as a v2 proxy)
    etcd_unit_down: str = ""  # the units check found the etcd unit stopped: "etcd-member is inactive"
    known_proxy: bool = False  # the lab's configuration says so: no need to probe for the v3 API
    local_status: parsers.EndpointStatus | None = None  # v3 `endpoint status` of the local member
    etcd_cluster: EtcdCluster | None = None  # what the etcd check heard of the cluster from here


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
        return replace(self, node=NodeFacts(v2_only=proxy, known_proxy=proxy))


Check = Callable[[SSHSession, CheckContext], CheckResult]


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


def _v2_cluster_health(session: SSHSession, ctx: CheckContext) -> parsers.ClusterHealth:
    result = session.run(["etcdctl", "cluster-health"], env=_V2, timeout=ctx.command_timeout)
    return parsers.parse_v2_cluster_health(result.stdout, result.stderr)


def _v3_cluster_health(session: SSHSession, ctx: CheckContext) -> parsers.ClusterHealth:
    argv = ["etcdctl", "--dial-timeout", _V3_DIAL, "endpoint", "health", "--cluster", "-w", "json"]
    result = session.run(argv, env=_V3, timeout=ctx.command_timeout)
    health = parsers.parse_v3_endpoint_health_json(result.stdout, result.stderr)
    if not health.members:  # an etcdctl without -w json support prints its lines on stderr
        lines = parsers.parse_v3_endpoint_health_lines(result.stderr)
        health = lines if lines.members else health
    return health


def _v3_local_status(session: SSHSession, ctx: CheckContext) -> tuple[parsers.EndpointStatus | None, str]:
    """The local member's v3 status (leader, id), quickly: a v2 proxy has no v3 API and would keep a v3
    client waiting for its whole command timeout. Returns the status, or None and why not."""
    argv = ["etcdctl", "--dial-timeout", _V3_PROBE_DIAL, "--command-timeout", _V3_PROBE_COMMAND]
    result = session.run([*argv, "endpoint", "status", "-w", "json"], env=_V3, timeout=ctx.command_timeout)
    statuses = parsers.parse_v3_endpoint_status_json(result.stdout)
    if statuses:
        return statuses[0], ""
    return None, parsers.first_error_line(result.stderr) or f"etcdctl exit {result.returncode}"


def _etcd_not_running(name: str, ctx: CheckContext) -> CheckResult | None:
    """With the etcd unit known to be stopped, etcdctl would only wait out its dial timeout (2-3 s): say so."""
    if not ctx.node.etcd_unit_down:
        return None
    return CheckResult(name, Status.SKIP, f"not asked: {ctx.node.etcd_unit_down}")


def check_etcd(session: SSHSession, ctx: CheckContext) -> CheckResult:
    if (stopped := _etcd_not_running("etcd", ctx)) is not None:
        ctx.node.etcd_cluster = EtcdCluster.UNAVAILABLE  # nothing serves here; other nodes may know better
        return stopped
    note = ""
    if DISTROS[ctx.distro].etcd_api == 2:
        health = _v2_cluster_health(session, ctx)
    elif ctx.node.known_proxy:
        # A v3 probe of a proxy would wait out its whole dial timeout (~2 s) to learn what the lab already says.
        health, note = _v2_cluster_health(session, ctx), " (etcd proxy: asked in v2)"
    else:
        ctx.node.local_status, why = _v3_local_status(session, ctx)
        if ctx.node.local_status is not None:
            health = _v3_cluster_health(session, ctx)
        else:
            # A Flatcar machine that is no etcd member runs a v2 proxy, which has no v3 API: ask it in v2.
            health = _v2_cluster_health(session, ctx)
            if health.error is None:
                note, ctx.node.v2_only = " (local etcd answers v2 only: a proxy)", True
            else:
                health = parsers.ClusterHealth(error=why)
    ctx.node.etcd_cluster = health.verdict
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


def check_members(session: SSHSession, ctx: CheckContext) -> CheckResult:
    if (stopped := _etcd_not_running("members", ctx)) is not None:
        return stopped
    listing: parsers.EtcdMemberList | None = None
    leader: parsers.EtcdMember | None = None
    if DISTROS[ctx.distro].etcd_api == 3 and not ctx.node.v2_only:
        local = ctx.node.local_status or _v3_local_status(session, ctx)[0]  # the etcd check may have it
        if local is not None:  # else a v2 proxy, or etcd is down: v2 below says which
            argv = ["etcdctl", "--dial-timeout", _V3_DIAL, "member", "list", "-w", "json"]
            result = session.run(argv, env=_V3, timeout=ctx.command_timeout)
            listing = parsers.parse_v3_member_list_json(result.stdout, result.stderr)
            leader = next((m for m in listing.members if m.id == local.leader_id), None)
    if listing is None or listing.error is not None:  # CoreOS, or a Flatcar v2 proxy (see check_etcd)
        result = session.run(["etcdctl", "member", "list"], env=_V2, timeout=ctx.command_timeout)
        v2_listing = parsers.parse_v2_member_list(result.stdout, result.stderr)
        if listing is None or v2_listing.error is None:
            listing, leader = v2_listing, v2_listing.leader
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


CHECKS: dict[str, Check] = {
    "units": check_units,
    "etcd": check_etcd,
    "members": check_members,
    "fleet": check_fleet,
}
