"""The checks run on each node over SSH, per distro (DESIGN §5).

- units: the distro's units active, one `systemctl is-active` each (with several units it exits 0 if *any*
  is active).
- etcd: the cluster's health as this node sees it — v2 `cluster-health` on CoreOS (verdict from the member
  lines, since etcd2 says "cluster is healthy" if any member is), v3 `endpoint health --cluster -w json` on
  Flatcar.
- members: as many members as expected, all started, and a leader.
- fleet (CoreOS): `fleetctl list-machines` sees every node.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from coreos_lab.health import parsers
from coreos_lab.health.report import CheckResult, Status
from coreos_lab.ssh import DEFAULT_COMMAND_TIMEOUT, SSHSession

DISTROS = ("coreos", "flatcar")
CHECK_NAMES = ("units", "etcd", "members", "fleet")
DISTRO_UNITS = {"coreos": ("etcd2", "fleet"), "flatcar": ("etcd-member",)}
_V2 = {"ETCDCTL_API": "2"}
_V3 = {"ETCDCTL_API": "3"}


@dataclass(frozen=True)
class CheckContext:
    distro: str
    expected_members: int
    node_count: int
    command_timeout: float = DEFAULT_COMMAND_TIMEOUT


Check = Callable[[SSHSession, CheckContext], CheckResult]


def _pass(name: str, detail: str) -> CheckResult:
    return CheckResult(name, Status.PASS, detail)


def _fail(name: str, detail: str) -> CheckResult:
    return CheckResult(name, Status.FAIL, detail)


def check_units(session: SSHSession, ctx: CheckContext) -> CheckResult:
    states: list[tuple[str, str]] = []
    for unit in DISTRO_UNITS[ctx.distro]:
        result = session.run(["systemctl", "is-active", unit], timeout=ctx.command_timeout)
        state = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
        states.append((unit, state or (result.stderr.strip().splitlines() or ["unknown"])[-1]))
    detail = ", ".join(f"{unit}: {state}" for unit, state in states)
    ok = all(state == "active" for _, state in states)
    return _pass("units", detail) if ok else _fail("units", detail)


def check_etcd(session: SSHSession, ctx: CheckContext) -> CheckResult:
    if ctx.distro == "coreos":
        result = session.run(["etcdctl", "cluster-health"], env=_V2, timeout=ctx.command_timeout)
        health = parsers.parse_v2_cluster_health(result.stdout, result.stderr)
    else:
        result = session.run(
            ["etcdctl", "endpoint", "health", "--cluster", "-w", "json"], env=_V3, timeout=ctx.command_timeout
        )
        health = parsers.parse_v3_endpoint_health_json(result.stdout, result.stderr)
        if not health.members:  # an older etcdctl without -w json support prints lines on stderr
            lines = parsers.parse_v3_endpoint_health_lines(result.stderr)
            health = lines if lines.members else health
    if health.error is not None:
        return _fail("etcd", f"etcd not answering: {health.error}")
    total = len(health.members)
    bad = health.unhealthy_members
    if not bad:
        return _pass("etcd", f"{total} of {total} members healthy")
    named = "; ".join(f"{m.url or m.member} {m.detail}".strip() for m in bad)
    verdict = f"cluster is {health.summary}" if health.summary and health.summary != "healthy" else "cluster degraded"
    if health.summary == "healthy":  # etcd2: "healthy" as soon as any member is
        verdict = "etcdctl says healthy but not every member is"
    return _fail("etcd", f"{verdict}: {total - len(bad)} of {total} healthy; not healthy: {named}")


def check_members(session: SSHSession, ctx: CheckContext) -> CheckResult:
    if ctx.distro == "coreos":
        result = session.run(["etcdctl", "member", "list"], env=_V2, timeout=ctx.command_timeout)
        listing = parsers.parse_v2_member_list(result.stdout, result.stderr)
        leader = listing.leader
    else:
        result = session.run(["etcdctl", "member", "list", "-w", "json"], env=_V3, timeout=ctx.command_timeout)
        listing = parsers.parse_v3_member_list_json(result.stdout, result.stderr)
        status = session.run(["etcdctl", "endpoint", "status", "-w", "json"], env=_V3, timeout=ctx.command_timeout)
        leaders = {s.leader_id for s in parsers.parse_v3_endpoint_status_json(status.stdout)} - {"0"}
        leader = next((m for m in listing.members if m.id in leaders), None)
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
    if ctx.distro != "coreos":
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
