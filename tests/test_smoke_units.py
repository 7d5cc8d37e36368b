"""Pieces of the smoke run that need no cluster: the JUnit writer, fleet list-units parsing, stage recording."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from harness.cli import lab

from coreos_lab.cluster.health.parsers import parse_fleet_units
from coreos_lab.errors import ExitCode, StageFailed, Unhealthy
from coreos_lab.junit import TestCase, write_junit
from coreos_lab.smoke import Recorder, _finish

FLEET_UNITS = (
    "UNIT\t\t\tMACHINE\t\t\t\tACTIVE\tSUB\n"
    "apache@1.service\t491586a6.../10.10.1.2\tactive\trunning\n"
    "apache@2.service\t148a18ff.../10.10.1.1\tactive\trunning\n"
)  # fleet's own example output (the project's recorded fleet sample)


def test_fleet_units_parsed_with_and_without_header() -> None:
    units = parse_fleet_units(FLEET_UNITS)
    assert [(u.unit, u.active, u.sub) for u in units] == [
        ("apache@1.service", "active", "running"),
        ("apache@2.service", "active", "running"),
    ]
    assert parse_fleet_units("\n".join(FLEET_UNITS.splitlines()[1:])) == units
    assert parse_fleet_units("garbage\n\n") == []


def test_junit_counts_and_texts(tmp_path: Path) -> None:
    path = tmp_path / "r.xml"
    write_junit(
        path,
        "suite",
        [
            TestCase("up", "smoke", 1.5),
            TestCase("health core-01", "smoke.health", 2.0, "failed", "etcd: down", "etcd: down\n--- log ---\n[x]"),
            TestCase("etcd round trip", "smoke", 0.0, "skipped", "health failed"),
        ],
    )
    suite = ET.parse(path).getroot().find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("3", "1", "1")
    failure = suite.find("testcase[@name='health core-01']/failure")
    assert failure is not None and failure.get("message") == "etcd: down" and "[x]" in (failure.text or "")


def test_stage_records_failure_with_log_tail_and_exit_code() -> None:
    rec = Recorder()
    with pytest.raises(StageFailed) as caught, rec.stage("up", log=lambda: "last log line"):
        raise Unhealthy("node core-02 never came up")
    assert caught.value.exit_code == ExitCode.UNHEALTHY
    (case,) = rec.cases
    assert case.outcome == "failed" and case.message == "node core-02 never came up"
    assert "last log line" in case.details


def test_stage_records_interrupt_as_error() -> None:
    rec = Recorder()
    with pytest.raises(KeyboardInterrupt), rec.stage("up"):
        raise KeyboardInterrupt
    assert rec.cases[0].outcome == "error"


def test_an_interrupt_between_stages_is_still_in_the_report(tmp_path: Path) -> None:
    """Stopped outside any stage (e.g. while the machines' SSH config is read): the report must not look green."""
    rec = Recorder()
    junit = tmp_path / "smoke.xml"

    def body() -> None:
        with rec.stage("up"):
            pass
        raise KeyboardInterrupt

    torn_down: list[bool] = []

    def teardown(failed: bool) -> None:
        torn_down.append(failed)

    with pytest.raises(KeyboardInterrupt):
        _finish(rec, junit, body, teardown)
    assert torn_down == [True]
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None and suite.get("errors") == "1"
    error = suite.find("testcase[@name='interrupted']/error")
    assert error is not None and error.get("message") == "interrupted"


@pytest.mark.parametrize("below", ["smoke.xml", "reports/smoke.xml"])
def test_a_junit_path_that_cannot_be_written_is_refused_before_the_run(tmp_path: Path, below: str) -> None:
    """`lab smoke --junit` checks the report's place first: a run must not spend minutes on a cluster and then
    lose its report. A path under a regular file cannot be written, root's runs included: exit 2 naming the
    path, before anything else (without it, the run would go on to ask for --distro)."""
    (tmp_path / "file").write_text("")
    (tmp_path / "ssh_config").write_text("")
    report = tmp_path / "file" / below
    run = lab("smoke", "--ssh-config", tmp_path / "ssh_config", "--junit", report, timeout=60)
    assert run.returncode == ExitCode.USAGE, run.stderr
    assert f"cannot write the JUnit report {report}: {tmp_path / 'file'} is not a directory" in run.stderr
    assert "--distro" not in run.stderr
