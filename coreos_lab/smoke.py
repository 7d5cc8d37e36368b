"""`lab smoke`: bring a cluster up, prove it works, tear it down, report — for CI pipelines.

Stages, each one JUnit test case: preflight → up → health (one case per node) → etcd round trip →
fleet unit (CoreOS) → destroy. With an ssh-config the cluster already exists: only health and the
functional stages run, and nothing is torn down. A failed stage skips the ones after it; teardown runs
always (Ctrl-C and SIGTERM included), unless `keep_on_failure` and something failed.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coreos_lab.distros import DISTROS
from coreos_lab.errors import ExitCode, LabError, StageFailed
from coreos_lab.junit import TestCase, write_junit
from coreos_lab.lab.lock import locked_lab
from coreos_lab.proc import sigterm_as_interrupt

if TYPE_CHECKING:
    from coreos_lab.cluster.health.targets import ClusterTargets
    from coreos_lab.lab.plan import LabPlan

SUITE = "coreos-lab smoke"


@dataclass
class SmokeResult:
    cases: list[TestCase]
    exit_code: ExitCode
    message: str
    kept: Path | None = None  # the lab left running for inspection (keep-on-failure)

    @property
    def passed(self) -> bool:
        return self.exit_code == ExitCode.OK

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "exit_code": int(self.exit_code),
            "message": self.message,
            "kept": str(self.kept) if self.kept else None,
            "cases": [
                {
                    "name": c.name,
                    "stage": c.classname,
                    "outcome": c.outcome,
                    "seconds": round(c.seconds, 3),
                    "message": c.message,
                }
                for c in self.cases
            ],
        }


@dataclass
class Recorder:
    """Times stages and turns their outcome into test cases; `on_case` shows progress as cases finish."""

    on_case: Callable[[TestCase], None] = lambda case: None
    cases: list[TestCase] = field(default_factory=list)

    def add(self, case: TestCase) -> None:
        self.cases.append(case)
        self.on_case(case)

    @contextlib.contextmanager
    def stage(self, name: str, *, log: Callable[[], str] | None = None) -> Iterator[list[str]]:
        """Run a stage; the body may append a detail line to the yielded list. LabErrors fail the case
        (and the run, via StageFailed); an interrupt marks it as an error and propagates."""
        details: list[str] = []
        start = time.monotonic()
        try:
            yield details
        except LabError as exc:
            tail = log() if log else ""
            text = (
                exc.message
                + (f"\nhint: {exc.hint}" if exc.hint else "")
                + (f"\n--- log tail ---\n{tail}" if tail else "")
            )
            self.add(TestCase(name, "smoke", time.monotonic() - start, "failed", exc.message.splitlines()[0], text))
            raise StageFailed(f"{name}: {exc.message}", exit_code=exc.exit_code) from exc
        except KeyboardInterrupt:
            self.add(TestCase(name, "smoke", time.monotonic() - start, "error", "interrupted", "interrupted"))
            raise
        self.add(TestCase(name, "smoke", time.monotonic() - start, "passed", "; ".join(details), "\n".join(details)))

    def skip(self, names: Sequence[str], reason: str) -> None:
        for name in names:
            self.add(TestCase(name, "smoke", 0.0, "skipped", reason))


# --------------------------------------------------------------------------------------------- stages


def _health_stage(rec: Recorder, cluster: ClusterTargets, checks: Sequence[str], timeout: float) -> None:
    """One case per node. The wait ends at the deadline; a node still failing then fails its case."""
    from coreos_lab.cluster.health import HealthTimeout, MachinesNotRunning, wait_healthy

    start = time.monotonic()
    try:
        report = wait_healthy(
            cluster.targets,
            cluster.distro,
            checks,
            cluster.members,
            timeout=max(timeout, 1.0),
            etcd_nodes=cluster.etcd_nodes,
            down=cluster.down,
        )
    except (HealthTimeout, MachinesNotRunning) as exc:
        report = exc.report
    except KeyboardInterrupt:  # as in Recorder.stage: the report says where the run was stopped
        rec.add(TestCase("health", "smoke.health", time.monotonic() - start, "error", "interrupted", "interrupted"))
        raise
    elapsed = time.monotonic() - start
    for node in report.nodes:
        summary = "; ".join(f"{c.name}: {c.status.value} ({c.detail})" for c in node.checks)
        if node.healthy:
            rec.add(TestCase(f"health {node.name}", "smoke.health", elapsed, "passed", summary, summary))
        else:
            failing = "; ".join(f"{c.name}: {c.detail}" for c in node.failing)
            rec.add(TestCase(f"health {node.name}", "smoke.health", elapsed, "failed", failing, summary))
    if not report.healthy:
        names = ", ".join(sorted({n for n, _ in report.failing()}))
        when = "with machines not running" if cluster.down else f"after {timeout:g}s"
        raise StageFailed(f"health: not healthy {when} on {names}", exit_code=ExitCode.UNHEALTHY)


def _functional_stages(rec: Recorder, cluster: ClusterTargets, checks: Sequence[str], timeout: float) -> None:
    from coreos_lab.cluster import functional

    with rec.stage("etcd round trip") as details:
        first, last = _round_trip_ends(cluster)
        details.append(functional.etcd_roundtrip(first, last, cluster.distro, timeout=min(timeout, 60.0)))
    if DISTROS[cluster.distro].fleet and "fleet" in checks:
        with rec.stage("fleet unit") as details:
            details.append(functional.fleet_unit(cluster.targets[0], timeout=min(timeout, 120.0)))


def run_against(cluster: ClusterTargets, checks: Sequence[str], *, timeout: float, rec: Recorder) -> None:
    """Health and functional stages against running nodes; raises StageFailed on the first failure."""
    from coreos_lab.cluster.health import select_checks

    selected = select_checks(cluster.distro, checks)
    deadline = time.monotonic() + timeout
    try:
        _health_stage(rec, cluster, selected, timeout)
    except StageFailed:
        rec.skip(_functional_names(cluster.distro, selected), "health failed")
        raise
    _functional_stages(rec, cluster, selected, max(deadline - time.monotonic(), 5.0))


def _round_trip_ends(cluster: ClusterTargets) -> tuple[Any, Any]:
    """First and last node; on Flatcar first and last etcd *member* (when the proxies are known), since a Flatcar
    proxy speaks only the v2 API and the round trip uses v3 there."""
    targets, etcd_nodes = cluster.targets, cluster.etcd_nodes
    if DISTROS[cluster.distro].etcd_api == 3 and etcd_nodes is not None:
        members = [t for t in targets if t.name in etcd_nodes]
        if members:
            return members[0], members[-1]
    return targets[0], targets[-1]


def _functional_names(distro: str | None, checks: Sequence[str]) -> list[str]:
    """The functional stages after health; `distro` None (not known yet): every stage a distro may have."""
    fleet = distro is None or DISTROS[distro].fleet
    return ["etcd round trip"] + (["fleet unit"] if fleet and "fleet" in checks else [])


# --------------------------------------------------------------------------------------------- entry points


def smoke_ssh(
    cluster: ClusterTargets,
    checks: Sequence[str] = (),
    *,
    timeout: float = 300.0,
    junit: Path | None = None,
    on_case: Callable[[TestCase], None] = lambda case: None,
) -> SmokeResult:
    """Smoke an existing cluster reachable over SSH: no Vagrant, nothing created or destroyed."""
    rec = Recorder(on_case)
    return _finish(rec, junit, lambda: run_against(cluster, checks, timeout=timeout, rec=rec))


def smoke_lab(
    lab_dir: Path | None,
    *,
    flags: dict[str, Any] | None = None,
    checks: Sequence[str] = (),
    timeout: float = 900.0,
    junit: Path | None = None,
    keep_on_failure: bool = False,
    on_case: Callable[[TestCase], None] = lambda case: None,
) -> SmokeResult:
    """The whole path with Vagrant: (init) → preflight → up → health → functional → destroy.

    Without `lab_dir` a throw-away lab is made (from `flags`) in a temporary directory and removed at the end;
    a directory without lab.yaml gets one. Teardown always runs once anything was created, unless
    `keep_on_failure` and the run failed (the kept lab is returned in the result).
    """
    import tempfile

    where = Path(tempfile.mkdtemp(prefix="lab-smoke-")) if lab_dir is None else lab_dir
    deadline = time.monotonic() + timeout
    run = LabRun(
        where,
        Recorder(on_case),
        deadline,
        flags or {},
        checks,
        throwaway=lab_dir is None,
        keep_on_failure=keep_on_failure,
    )
    where.mkdir(parents=True, exist_ok=True)  # init would make it; the lock needs it first
    with locked_lab(where, "lab smoke"):  # from init to teardown: no other writer in between
        return _finish(run.rec, junit, run.stages, run.teardown)


@dataclass
class LabRun:
    """The stages of a smoke run with Vagrant, and the teardown that undoes them. The stages end early when one
    fails or on an interrupt; `plan` and `created` then tell teardown what there is to undo."""

    where: Path
    rec: Recorder
    deadline: float
    flags: dict[str, Any]
    checks: Sequence[str]
    throwaway: bool  # `where` is a temporary directory of our own: removed at the end
    keep_on_failure: bool
    plan: LabPlan | None = None
    created: bool = False  # machines may exist: even a failed `vagrant up` may have made some

    def left(self) -> float:
        return max(self.deadline - time.monotonic(), 1.0)

    def stages(self) -> None:
        """(init) → preflight → up → health → functional; raises StageFailed at the first failure, after
        recording the stages that will not run as skipped."""
        from coreos_lab import lifecycle
        from coreos_lab.cluster.health.targets import cluster_from_lab
        from coreos_lab.lab.plan import load_plan

        rec, where, checks = self.rec, self.where, self.checks
        pending = ["preflight", "up", "health", *_functional_names(None, checks or ["fleet"])]
        try:
            if not (where / "lab.yaml").exists():
                from coreos_lab.lab.labfile import init_lab

                with rec.stage("init") as details:
                    details.append(f"lab.yaml written in {init_lab(where, flags=self.flags).path.parent}")
            plan = self.plan = load_plan(where)
            pending = ["preflight", "up", "health", *_functional_names(plan.distro, checks or ["fleet"])]
            with rec.stage("preflight") as details:
                ready = lifecycle.preflight(plan)
                details.append(f"{len(ready.findings)} prerequisites ok")
            pending.remove("preflight")
            # One server for the whole run: etcd members keep talking to discovery after `vagrant up` returns.
            with lifecycle.serving_mirror(plan, ready) as server:
                with rec.stage("up", log=lambda: _log_tail(plan)) as details:
                    try:
                        result = lifecycle.up(plan, wait=False, timeout=self.left(), ready=ready, server=server)
                    finally:
                        self.created = True
                    details.append(f"{len(result.started)} machines up in {result.seconds:.0f}s (server: {server})")
                pending.remove("up")
                cluster = cluster_from_lab(plan)
                pending.clear()
                run_against(cluster, checks, timeout=self.left(), rec=rec)
        except StageFailed:
            rec.skip([p for p in pending if p not in {c.name for c in rec.cases}], "an earlier stage failed")
            raise

    def teardown(self, failed: bool) -> Path | None:
        """Destroy what the stages created and remove a throw-away lab; the lab kept for inspection, if any."""
        import shutil

        from coreos_lab import lifecycle

        if failed and self.keep_on_failure and self.created:
            return self.where
        plan = self.plan
        if self.created and plan is not None:
            with self.rec.stage("destroy", log=lambda: _log_tail(plan)) as details:
                details.append(f"destroyed {', '.join(lifecycle.destroy(plan).destroyed) or 'nothing'}")
        if self.throwaway:
            shutil.rmtree(self.where, ignore_errors=True)
        return None


def _log_tail(plan: LabPlan, lines: int = 30) -> str:
    """The end of the newest Vagrant log of the lab, for a failed case."""
    logs = sorted(plan.log_dir.glob("*.log"), key=lambda p: p.stat().st_mtime) if plan.log_dir.is_dir() else []
    if not logs:
        return ""
    return "\n".join(logs[-1].read_text(errors="replace").splitlines()[-lines:])


def _finish(
    rec: Recorder, junit: Path | None, body: Callable[[], None], teardown: Callable[[bool], Path | None] | None = None
) -> SmokeResult:
    """Run `body`, then `teardown(failed)` always; write the JUnit file in every case, interrupts included."""
    started = datetime.now(UTC)
    code, message, kept = ExitCode.OK, "smoke passed", None
    interrupted = False
    try:
        with sigterm_as_interrupt():
            try:
                body()
            except StageFailed as exc:
                code, message = exc.exit_code, exc.message
            except KeyboardInterrupt:
                interrupted = True
                code, message = ExitCode.INTERRUPTED, "interrupted"
                if not any(c.outcome == "error" for c in rec.cases):  # stopped between stages
                    rec.add(TestCase("interrupted", "smoke", 0.0, "error", "interrupted", "interrupted"))
            finally:
                if teardown is not None:
                    kept = teardown(code != ExitCode.OK)
    except StageFailed as exc:  # teardown itself failed
        if code == ExitCode.OK:
            code, message = exc.exit_code, exc.message
    finally:
        if junit is not None:
            write_junit(junit, SUITE, rec.cases, started=started)
    if interrupted:
        raise KeyboardInterrupt
    return SmokeResult(rec.cases, code, message, kept)
