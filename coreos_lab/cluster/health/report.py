"""What a health run found: per node, per check, pass / fail / skip with a detail."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"


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

    def as_dict(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy,
            "distro": self.distro,
            "expected_members": self.expected_members,
            "checks": list(self.checks),
            "elapsed": round(self.elapsed, 3),
            "nodes": {n.name: n.as_dict() for n in self.nodes},
        }
