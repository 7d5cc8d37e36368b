"""What a health run found: per node, per check, pass / fail / skip with a detail; and what etcd says of the
cluster as a whole (`EtcdCluster`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"


class EtcdCluster(StrEnum):
    """etcd's own words for a cluster (`etcdctl cluster-health`). A member is healthy only when it has a leader and
    a read through raft succeeds, so one healthy member proves a quorum."""

    HEALTHY = "healthy"  # every member healthy
    DEGRADED = "degraded"  # some member down or cut off; the rest have a leader and a quorum: writes succeed
    UNAVAILABLE = "unavailable"  # no member healthy: no quorum, no leader, writes fail

    @property
    def meaning(self) -> str:
        return _MEANINGS[self]


_MEANINGS = {
    EtcdCluster.HEALTHY: "every member healthy",
    EtcdCluster.DEGRADED: "a member is down or cut off; the others still have a leader and take writes",
    EtcdCluster.UNAVAILABLE: "no quorum: no leader, writes fail",
}


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: Status
    detail: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"status": self.status.value, "detail": self.detail}


@dataclass(frozen=True)
class NodeReport:
    name: str
    address: str
    checks: tuple[CheckResult, ...] = ()
    machine: str | None = None  # a lab machine that is not running: Vagrant's state (poweroff, not_created, …)
    etcd_cluster: EtcdCluster | None = None  # the cluster as this node's etcd sees it; None: not asked

    @property
    def healthy(self) -> bool:
        return all(c.status is not Status.FAIL for c in self.checks)

    @property
    def failing(self) -> list[CheckResult]:
        return [c for c in self.checks if c.status is Status.FAIL]

    def check(self, name: str) -> CheckResult | None:
        return next((c for c in self.checks if c.name == name), None)

    def as_dict(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "healthy": self.healthy,
            "machine": self.machine,
            "etcd_cluster": self.etcd_cluster,
            "checks": {c.name: c.as_dict() for c in self.checks},
        }


@dataclass(frozen=True)
class HealthReport:
    distro: str
    expected_members: int
    checks: tuple[str, ...]
    nodes: tuple[NodeReport, ...] = field(default=())
    elapsed: float = 0.0

    @property
    def healthy(self) -> bool:
        return bool(self.nodes) and all(n.healthy for n in self.nodes)

    def failing(self) -> list[tuple[str, CheckResult]]:
        """(node, check) for every failed check, in node order."""
        return [(n.name, c) for n in self.nodes for c in n.failing]

    @property
    def etcd_cluster(self) -> EtcdCluster | None:
        """What etcd says of the cluster: a view with a quorum (degraded, then healthy) wins over unavailable, which
        a member cut off from the rest, or a node whose own etcd is stopped, reports while the others carry on.
        None: no node's etcd was asked."""
        views = {n.etcd_cluster for n in self.nodes}
        return next(
            (v for v in (EtcdCluster.DEGRADED, EtcdCluster.HEALTHY, EtcdCluster.UNAVAILABLE) if v in views), None
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy,
            "distro": self.distro,
            "expected_members": self.expected_members,
            "checks": list(self.checks),
            "etcd_cluster": self.etcd_cluster,
            "elapsed": round(self.elapsed, 3),
            "nodes": {n.name: n.as_dict() for n in self.nodes},
        }
