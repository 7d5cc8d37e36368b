"""What a prerequisite check is: a function that looks at a `DoctorContext` and yields `DoctorFinding`s.

Shared by `lab doctor` and `lab up`'s preflight (`coreos_lab.doctor`) and by the providers' own checks
(`coreos_lab.vagrant.virtualbox`, `coreos_lab.vagrant.libvirt`), which the provider table lists.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from coreos_lab.lab.plan import LabPlan

Level = Literal["ok", "warn", "fail"]


@dataclass(frozen=True)
class DoctorFinding:
    check: str
    level: Level
    detail: str
    fix: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"check": self.check, "level": self.level, "detail": self.detail, "fix": self.fix}


@dataclass
class DoctorContext:
    """What the checks look at. Without a lab, only the machine-wide checks have something to say."""

    plan: LabPlan | None
    provider: str
    mirror_root: Path
    # Filled by earlier checks for later ones (e.g. the Vagrant version for known-bad provider pairs).
    facts: dict[str, Any] = field(default_factory=dict)


Check = Callable[[DoctorContext], Iterable[DoctorFinding]]
