"""JUnit XML reports, the format every CI system shows as test results.

One `<testsuite>` with one `<testcase>` per stage (and per node for health). Written atomically, so a
pipeline never picks up half a report even when the run is interrupted while writing it.
"""

from __future__ import annotations

import os
import socket
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from coreos_lab.errors import BadInput
from coreos_lab.fsutil import atomic_write_bytes

Outcome = Literal["passed", "failed", "error", "skipped"]


@dataclass
class TestCase:
    name: str
    classname: str
    seconds: float
    outcome: Outcome = "passed"
    message: str = ""
    details: str = ""  # failure text: the reason and the tail of the relevant log

    __test__ = False  # not a pytest test class


def write_junit(path: Path, suite: str, cases: list[TestCase], *, started: datetime | None = None) -> None:
    counts = {outcome: sum(1 for c in cases if c.outcome == outcome) for outcome in ("failed", "error", "skipped")}
    root = ET.Element("testsuites")
    element = ET.SubElement(
        root,
        "testsuite",
        name=suite,
        tests=str(len(cases)),
        failures=str(counts["failed"]),
        errors=str(counts["error"]),
        skipped=str(counts["skipped"]),
        time=f"{sum(c.seconds for c in cases):.3f}",
        timestamp=(started or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S"),
        hostname=socket.gethostname(),
    )
    for case in cases:
        node = ET.SubElement(element, "testcase", name=case.name, classname=case.classname, time=f"{case.seconds:.3f}")
        if case.outcome in ("failed", "error"):
            tag = "failure" if case.outcome == "failed" else "error"
            failure = ET.SubElement(node, tag, message=case.message, type=tag)
            failure.text = case.details or case.message
        elif case.outcome == "skipped":
            ET.SubElement(node, "skipped", message=case.message)
    ET.indent(root)
    data = ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"
    atomic_write_bytes(path, data)


def check_destination(path: Path) -> None:
    """Refuse a report path that cannot be written before the run, not after minutes of it: the nearest existing
    directory on the way must be writable (missing directories below it are made when the report is written)."""
    # The report replaces an existing file: its directory takes the new one. "/" (or ".") always exists.
    existing = next(p for p in path.parents if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise BadInput(
            f"cannot write the JUnit report {path}: {existing} is not a directory this user can write to",
            hint="pass --junit a path in a writable directory",
        )
