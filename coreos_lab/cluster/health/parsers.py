"""Parsers for the outputs of the health commands (docs/field-notes.md §4). Pure functions of text; never raise on
garbage.

- `ETCDCTL_API=2 etcdctl cluster-health`: one line per member and a summary. etcd2 (≤ 3.2) prints
  "cluster is healthy" if *any* member is healthy, so the verdict is computed from the member lines; 3.3+
  prints healthy / degraded / unavailable.
- `ETCDCTL_API=3 etcdctl endpoint health --cluster`: plain lines on **stderr**; `-w json` a list on stdout.
- `etcdctl member list`: v2 `<id>: name=… peerURLs=… clientURLs=… isLeader=…`; v3 `-w json`.
- `ETCDCTL_API=3 etcdctl endpoint status -w json`: the member's view of the leader.
- `fleetctl list-machines --no-legend --full`: tab-separated `MACHINE IP METADATA`.
- `fleetctl list-units --no-legend --full`: `UNIT MACHINE ACTIVE SUB` (the functional checks' fleet unit).
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field
from typing import Any

from coreos_lab.cluster.health.report import EtcdCluster

# ---------------------------------------------------------------- v2 cluster-health


@dataclass(frozen=True)
class EtcdMemberHealth:
    """One member's line of a cluster-health / endpoint-health answer."""

    member: str  # member id (v2) or endpoint URL (v3)
    healthy: bool
    url: str = ""
    detail: str = ""


@dataclass(frozen=True)
class ClusterHealth:
    """A cluster's health as one etcdctl invocation saw it."""

    members: tuple[EtcdMemberHealth, ...] = ()
    summary: str | None = None  # healthy | degraded | unavailable, as printed (None when absent)
    error: str | None = None  # why the health could not be determined (e.g. no member answered)

    @property
    def healthy(self) -> bool:
        """Every member healthy. Does not trust etcd2's "healthy if any" summary."""
        return self.error is None and bool(self.members) and all(m.healthy for m in self.members)

    @property
    def unhealthy_members(self) -> list[EtcdMemberHealth]:
        return [m for m in self.members if not m.healthy]

    @property
    def verdict(self) -> EtcdCluster:
        """healthy, degraded or unavailable, counted from the member lines as etcd 3.3+ counts its summary (etcd2's
        says healthy if any member is); unavailable too when nothing answered."""
        healthy = sum(m.healthy for m in self.members)
        if self.error is None and self.members and healthy == len(self.members):
            return EtcdCluster.HEALTHY
        return EtcdCluster.DEGRADED if healthy else EtcdCluster.UNAVAILABLE


_V2_MEMBER = re.compile(r"^member (?P<id>[0-9a-f]+) is (?P<state>healthy|unhealthy|unreachable): (?P<rest>.*)$")
_V2_URL = re.compile(r"(?:from|\[)\s*(?P<url>https?://[^\s\]]+)")
_V2_SUMMARY = re.compile(r"^cluster is (?P<summary>healthy|degraded|unavailable)\s*$")
_V2_LIST_FAILED = "failed to list members"


def parse_v2_cluster_health(stdout: str, stderr: str = "") -> ClusterHealth:
    members: dict[str, EtcdMemberHealth] = {}
    summary: str | None = None
    error: str | None = None
    for raw in stdout.splitlines():
        line = raw.strip()
        if m := _V2_MEMBER.match(line):
            if m["id"] in members and not members[m["id"]].healthy:
                continue  # a member once said to be unhealthy stays so, whatever another line says
            url_match = _V2_URL.search(m["rest"])
            members[m["id"]] = EtcdMemberHealth(
                member=m["id"],
                healthy=m["state"] == "healthy",
                url=url_match["url"] if url_match else "",
                detail=m["state"] if m["state"] != "healthy" else "",
            )
        elif s := _V2_SUMMARY.match(line):
            summary = s["summary"]
        elif _V2_LIST_FAILED in line:
            error = line
    if error is None and not members:
        error = first_error_line(stderr) or "no member health lines in etcdctl output"
    elif error is not None and (why := first_error_line(stderr)):
        error = f"{error}: {why}"
    return ClusterHealth(members=tuple(members.values()), summary=summary, error=error)


# ---------------------------------------------------------------- v3 endpoint health

_V3_LINE = re.compile(r"^(?P<url>\S+) is (?P<state>healthy|unhealthy): (?P<rest>.*)$")


def parse_v3_endpoint_health_json(stdout: str, stderr: str = "") -> ClusterHealth:
    """`endpoint health --cluster -w json`: `[{"endpoint", "health", "took", "error"?}, …]` on stdout."""
    data = _load_json(stdout)
    members: list[EtcdMemberHealth] = []
    if isinstance(data, list):
        for item in data:
            if not isinstance(item, dict) or not isinstance(item.get("endpoint"), str):
                continue
            healthy = item.get("health") is True or item.get("health") == "true"
            error = item.get("error")
            members.append(
                EtcdMemberHealth(
                    member=item["endpoint"],
                    healthy=healthy,
                    url=item["endpoint"],
                    detail="" if healthy else str(error or "unhealthy"),
                )
            )
    error_text = None if members else (first_error_line(stderr) or "no endpoint health in etcdctl output")
    return ClusterHealth(members=tuple(members), error=error_text)


def parse_v3_endpoint_health_lines(text: str) -> ClusterHealth:
    """`endpoint health --cluster` without `-w json`: its lines arrive on stderr, between JSON log lines."""
    members: list[EtcdMemberHealth] = []
    for raw in text.splitlines():
        line = raw.strip()
        if m := _V3_LINE.match(line):
            healthy = m["state"] == "healthy"
            members.append(
                EtcdMemberHealth(member=m["url"], healthy=healthy, url=m["url"], detail="" if healthy else m["rest"])
            )
    error = None if members else (first_error_line(text) or "no endpoint health lines in etcdctl output")
    return ClusterHealth(members=tuple(members), error=error)


# ---------------------------------------------------------------- member list


@dataclass(frozen=True)
class EtcdMember:
    """One member as `etcdctl member list` shows it."""

    id: str
    name: str
    peer_urls: tuple[str, ...] = ()
    client_urls: tuple[str, ...] = ()
    is_leader: bool | None = None  # v2 says; v3 member list does not
    started: bool = True


@dataclass(frozen=True)
class EtcdMemberList:
    """The members of one `etcdctl member list`, or why there are none."""

    members: tuple[EtcdMember, ...] = field(default=())
    error: str | None = None

    @property
    def leader(self) -> EtcdMember | None:
        return next((m for m in self.members if m.is_leader), None)


_V2_MEMBER_LINE = re.compile(r"^(?P<id>[0-9a-f]+)(?P<unstarted>\[unstarted\])?:\s+(?P<rest>.*)$")
_KV = re.compile(r"(\w+)=(\S*)")


def _member_list(members: list[EtcdMember], stderr: str) -> EtcdMemberList:
    """The members parsed, or why there are none."""
    return EtcdMemberList(tuple(members), None if members else (first_error_line(stderr) or "no members listed"))


def _urls(text: str) -> tuple[str, ...]:
    return tuple(u for u in (p.strip() for p in text.split(",")) if u)


def parse_v2_member_list(stdout: str, stderr: str = "") -> EtcdMemberList:
    members: list[EtcdMember] = []
    for raw in stdout.splitlines():
        m = _V2_MEMBER_LINE.match(raw.strip())
        if not m:
            continue
        fields = dict(_KV.findall(m["rest"]))
        members.append(
            EtcdMember(
                id=m["id"],
                name=fields.get("name", ""),
                peer_urls=_urls(fields.get("peerURLs", "")),
                client_urls=_urls(fields.get("clientURLs", "")),
                is_leader=fields.get("isLeader") == "true",
                started=not m["unstarted"],
            )
        )
    return _member_list(members, stderr)


def parse_v3_member_list_json(stdout: str, stderr: str = "") -> EtcdMemberList:
    """`member list -w json`: ids are decimal there; shown as hex like the plain form. No name = unstarted."""
    data = _load_json(stdout)
    members: list[EtcdMember] = []
    raw_members = data.get("members") if isinstance(data, dict) else None
    for item in raw_members if isinstance(raw_members, list) else []:
        if not isinstance(item, dict):
            continue
        name = item["name"] if isinstance(item.get("name"), str) else ""
        members.append(
            EtcdMember(
                id=_hex_id(item.get("ID")),
                name=name,
                peer_urls=_str_tuple(item.get("peerURLs")),
                client_urls=_str_tuple(item.get("clientURLs")),
                started=bool(name),
            )
        )
    return _member_list(members, stderr)


@dataclass(frozen=True)
class EndpointStatus:
    endpoint: str
    member_id: str
    leader_id: str  # "0" when the member knows no leader
    version: str = ""


def parse_v3_endpoint_status_json(stdout: str) -> list[EndpointStatus]:
    """`endpoint status -w json`: `[{"Endpoint", "Status": {"header": {"member_id"}, "leader", "version"}}]`."""
    data = _load_json(stdout)
    statuses: list[EndpointStatus] = []
    for item in data if isinstance(data, list) else []:
        if not isinstance(item, dict) or not isinstance(item.get("Status"), dict):
            continue
        status = item["Status"]
        header = status.get("header") if isinstance(status.get("header"), dict) else {}
        statuses.append(
            EndpointStatus(
                endpoint=str(item.get("Endpoint", "")),
                member_id=_hex_id(header.get("member_id")),
                leader_id=_hex_id(status.get("leader")),
                version=str(status.get("version", "")),
            )
        )
    return statuses


# ---------------------------------------------------------------- fleet


@dataclass(frozen=True)
class FleetMachine:
    machine: str
    ip: str
    metadata: str = ""


_FLEET_MACHINE_ID = re.compile(r"^[0-9a-f]{8,32}(?:\.\.\.)?$")  # /etc/machine-id, or its first 8 digits and "..."


def _fleet_address(text: str) -> bool:
    """fleet's IP column: the machine's public IP, or "-" when it has none."""
    try:
        return text == "-" or bool(ipaddress.ip_address(text))
    except ValueError:
        return False


def parse_fleet_machines(stdout: str) -> list[FleetMachine]:
    """`fleetctl list-machines` rows (tab-separated; the `MACHINE IP METADATA` legend, if there, and any line that
    is no machine row are skipped: only machines count toward "fleet sees every machine")."""
    machines: list[FleetMachine] = []
    for raw in stdout.splitlines():
        parts = [p.strip() for p in raw.split("\t") if p.strip()]
        if len(parts) < 2 or not _FLEET_MACHINE_ID.match(parts[0]) or not _fleet_address(parts[1]):
            continue
        machines.append(FleetMachine(parts[0], parts[1], parts[2] if len(parts) > 2 else ""))
    return machines


@dataclass(frozen=True)
class FleetUnit:
    unit: str
    machine: str
    active: str
    sub: str


def parse_fleet_units(stdout: str) -> list[FleetUnit]:
    """`fleetctl list-units [--no-legend] [--full]`: tab-separated UNIT MACHINE ACTIVE SUB (header optional)."""
    units = []
    for line in stdout.splitlines():
        fields = line.split()
        if len(fields) < 4 or fields[0] == "UNIT":
            continue
        units.append(FleetUnit(*fields[:4]))
    return units


# fleet's API answers 503 "fleet server unable to communicate with etcd". Not markers: the "Possible issues:"
# lines fleetctl 1.0 prints after every list-machines error ("etcd is unhealthy and/or lost quorum", …): they name
# no cause.
FLEET_ETCD_TROUBLE = ("unable to communicate with etcd", "googleapi: Error 503")


def fleet_error(stdout: str, stderr: str) -> str | None:
    """The line that explains a fleetctl failure, preferring its known etcd complaints."""
    text = f"{stderr}\n{stdout}"
    for line in text.splitlines():
        if any(marker in line for marker in FLEET_ETCD_TROUBLE):
            return line.strip()
    return first_error_line(stderr)


# ---------------------------------------------------------------- helpers


def _load_json(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _hex_id(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return format(value, "x")
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 40:
        return format(int(value), "x")
    return "0" if value is None else str(value)


def _str_tuple(value: object) -> tuple[str, ...]:
    return tuple(str(v) for v in value) if isinstance(value, list) else ()


def first_error_line(text: str) -> str | None:
    """The most telling line of a tool's stderr: an `Error:` line, else the first non-log, non-empty line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        if line.startswith("Error:"):
            return " ".join(line.split())
    for line in lines:
        if not line.startswith("{"):  # etcd's structured log lines are noise here
            return line
    return None
