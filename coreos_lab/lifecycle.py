"""Bringing a lab's machines up and down with Vagrant: up, halt, destroy, status, ssh.

`up` works in a fixed order so that a missing prerequisite costs nothing:
1. preflight — Vagrant present, provider usable, lab subnet clear, box (and Flatcar's etcd image) available
   (in the mirror at the lab's URL or in the local store), ports free — before any side effect: on failure
   exit 4, nothing created, no token consumed;
2. the mirror + discovery server: the one answering at the lab's mirror URL, else an embedded one that runs
   for the duration of the command;
3. render (idempotent: keeps an existing cluster's token, mints one for a new cluster);
4. the box added once, then one `vagrant up NAME` per machine — concurrently where the provider allows it;
5. the cluster marked created (its token is spent from then on), then health unless told not to wait.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from coreos_lab import proc
from coreos_lab.doctor import (
    check_etcd_image,
    check_mirror,
    check_ports,
    check_subnet,
    check_vagrant,
    provider_checks,
    vagrant_has_box,
)
from coreos_lab.errors import BadInput, ExitCode, LabError, Timeout, ToolMissing
from coreos_lab.fsutil import atomic_write_text
from coreos_lab.lab.lock import locked_lab
from coreos_lab.lab.plan import LabPlan
from coreos_lab.prerequisites import DoctorContext, DoctorFinding
from coreos_lab.vagrant.adapter import KeyRefused, MachineStatus, Vagrant
from coreos_lab.vagrant.libvirt import resolve_driver
from coreos_lab.vagrant.providers import PROVIDERS
from coreos_lab.vagrant.qemu_image_box import refused_key_message

DEFAULT_TIMEOUT = 900.0

# (node, phase, detail): phases are waiting, box, creating, running, failed, checking, healthy.
NodeEvent = Callable[[str, str, str], None]


def _ignore(node: str, phase: str, detail: str) -> None:
    pass


def _progress(on_event: NodeEvent, nodes: Sequence[str], phase: str) -> Callable[[str, str], None]:
    """A Vagrant progress callback: a message about one of `nodes` goes to it, any other to all of them."""

    def report(target: str, line: str) -> None:
        for node in [target] if target in nodes else nodes:
            on_event(node, phase, line)

    return report


# -- preflight ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preflight:
    """What preflight found out, handed down so that `up` asks nothing twice."""

    findings: list[DoctorFinding]
    mirror_answers: bool  # a mirror answers at the lab's mirror URL (else `up` serves the store there itself)
    libvirt_driver: str | None = None  # libvirt: the domain type to render, `auto` resolved (kvm or qemu)


def preflight(plan: LabPlan) -> Preflight:
    """Every prerequisite of `up`, without side effects; `ToolMissing` (exit 4) naming the first failure.

    The checks are doctor's own, so `lab doctor` and `lab up` never disagree. The mirror is probed here, once.
    """
    ctx = DoctorContext(plan=plan, provider=plan.provider, mirror_root=mirror_root_of(plan))
    checks = [check_vagrant, *provider_checks(plan.provider), check_subnet, check_mirror, check_etcd_image, check_ports]
    findings: list[DoctorFinding] = []
    for check in checks:
        for finding in check(ctx):
            if finding.level == "fail" and finding.check == "mirror-box" and vagrant_has_box(plan):
                finding = DoctorFinding("mirror-box", "ok", f"{finding.detail}, but Vagrant already has it")
            findings.append(finding)
            if finding.level == "fail":
                raise ToolMissing(finding.detail, hint=finding.fix)
    driver = resolve_driver(plan.libvirt_driver, ctx.facts.get("kvm")) if plan.libvirt_driver else None
    return Preflight(findings, ctx.facts["mirror_metadata"] is not None, driver)


def mirror_root_of(plan: LabPlan) -> Path:
    from coreos_lab.paths import default_mirror_root

    return plan.mirror_root if plan.mirror_root is not None else default_mirror_root()


@contextlib.contextmanager
def serving_mirror(plan: LabPlan, ready: Preflight) -> Iterator[str]:
    """The mirror + discovery server for the duration of the block: "external" when preflight found one answering
    at the lab's mirror URL, else "embedded" (started here on that address, stopped on exit)."""
    if ready.mirror_answers:
        yield "external"
        return
    if not plan.mirror_is_local:
        raise ToolMissing(
            f"mirror not reachable at {plan.mirror_url}", hint="start it there (`lab mirror serve`) or fix mirror.url"
        )
    from coreos_lab.server import EmbeddedServer

    # Bound where the Vagrantfile and user-data expect it; guests reach the host's loopback through NAT.
    server = EmbeddedServer(
        mirror_root_of(plan),
        host=plan.mirror_host,
        port=plan.mirror_port,
        base_url=plan.mirror_url,
        guest_hosts=plan.guest_listen_hosts,
    )
    try:
        server.start()
    except OSError as exc:
        raise ToolMissing(
            f"cannot serve the mirror at {plan.mirror_url}: {exc.strerror or exc}",
            hint="free that port, or run `lab mirror serve` there",
        ) from exc
    try:
        yield "embedded"
    finally:
        server.stop()


# -- up -----------------------------------------------------------------------------------------------------------


@dataclass
class UpResult:
    lab_dir: Path
    server: str  # external | embedded
    started: list[str]  # machines this run brought up
    already_running: list[str]
    nodes: list[MachineStatus]
    render: dict[str, Any] | None = None
    health: Any = None  # a HealthReport when waited for
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "lab_dir": str(self.lab_dir),
            "server": self.server,
            "started": self.started,
            "already_running": self.already_running,
            "nodes": [n.as_dict() for n in self.nodes],
            "render": self.render,
            "health": self.health.as_dict() if self.health is not None else None,
            "seconds": round(self.seconds, 1),
        }


class UpFailed(LabError):
    """One or more machines did not come up; each failure names its machine and quotes its log."""

    def __init__(self, failures: dict[str, LabError], total: int):
        names = ", ".join(failures)
        parts = [f"vagrant up failed for {names} ({len(failures)} of {total} machines)"]
        by_error: dict[int, list[str]] = {}  # one process may have failed for several machines
        for name, exc in failures.items():
            by_error.setdefault(id(exc), []).append(name)
        errors = {id(exc): exc for exc in failures.values()}
        parts += [f"--- {', '.join(group)}: {errors[key].message}" for key, group in by_error.items()]
        codes = {exc.exit_code for exc in failures.values()}
        code = next((c for c in (ExitCode.MISSING_TOOL, ExitCode.TIMEOUT) if c in codes), ExitCode.ERROR)
        super().__init__(
            "\n".join(parts),
            hint="`lab status` shows what runs; fix the cause and `lab up` again (running machines are kept), "
            "or `lab destroy` to start over",
            exit_code=code,
        )
        self.failures = failures


def up(
    plan: LabPlan,
    *,
    wait: bool = True,
    checks: Sequence[str] = (),
    timeout: float = DEFAULT_TIMEOUT,
    on_event: NodeEvent = _ignore,
    ready: Preflight | None = None,
    server: str | None = None,
) -> UpResult:
    """Bring the lab up; with `wait`, until the health `checks` pass (default: all of the distro's).
    `ready`: the caller has just run `preflight` itself (smoke reports it as a stage of its own); `server`: the
    caller serves the mirror (`serving_mirror`) for longer than `up` runs."""
    with locked_lab(plan.lab_dir, "lab up"):
        started_at = time.monotonic()
        deadline = started_at + timeout
        if ready is None:
            for node in plan.nodes:
                on_event(node, "waiting", "preflight")
            ready = preflight(plan)
        serving: contextlib.AbstractContextManager[str] = (
            contextlib.nullcontext(server) if server is not None else serving_mirror(plan, ready)
        )
        with serving as served:
            rendered = render(plan, ready.libvirt_driver)  # before any Vagrant call: each one loads the Vagrantfile
            vagrant = Vagrant(plan.lab_dir, provider=plan.provider, log_dir=plan.log_dir)
            # Two independent questions, each ~1.5 s of Ruby when Vagrant must be asked: side by side.
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="vagrant-box") as pool:
                has_box = pool.submit(vagrant.has_box, plan.box_name, plan.box_version, plan.provider)
                before = {s.name: s for s in machine_states(plan, vagrant)}
                box_added = has_box.result()
            todo = [n for n in plan.nodes if not (n in before and before[n].running)]
            for node in plan.nodes:
                if node not in todo:
                    on_event(node, "running", "already running")
            targets = None  # the machines' SSH targets, when fetched early
            if todo:
                if not box_added:
                    for node in todo:
                        on_event(node, "box", f"adding {plan.box_name} {plan.box_version or ''}".strip())
                    vagrant.box_add(
                        plan.metadata_url,
                        version=plan.box_version,
                        provider=plan.provider,
                        on_progress=_progress(on_event, todo, "box"),
                    )
                # From here on machines exist: the token belongs to this cluster and is never reused.
                mark_created(plan)
                _own_management_network(plan)
                with _TargetsOnceBooted(plan, todo, on_event, enabled=wait) as early:
                    _up_machines(plan, todo, deadline=deadline, on_event=early.on_event)
                    targets = early.targets()
            health = None
            if wait:
                left = max(deadline - time.monotonic(), 1.0)
                health = wait_healthy(plan, checks=checks, timeout=left, on_event=on_event, targets=targets)
        # `vagrant up` succeeded for every machine it started, so each is running now: no second `vagrant status`.
        after = [
            replace(status, state="running", description="running") if status.name in todo else status
            for status in before.values()
        ]
        return UpResult(
            lab_dir=plan.lab_dir,
            server=served,
            started=todo,
            already_running=[n for n in plan.nodes if n not in todo],
            nodes=after,
            render=rendered,
            health=health,
            seconds=time.monotonic() - started_at,
        )


def machine_states(plan: LabPlan, vagrant: Vagrant) -> list[MachineStatus]:
    """`vagrant status`, unless no machine has an id file: Vagrant then reports every one not created
    (`created_on_disk`), so its ~2 s of Ruby are not spent to hear it."""
    if any(created_on_disk(plan, n) for n in plan.nodes):
        return vagrant.status()
    return [MachineStatus(n, "not_created", plan.provider, "not created") for n in plan.nodes]


def _up_machines(plan: LabPlan, names: Sequence[str], *, deadline: float, on_event: NodeEvent) -> None:
    """Bring `names` up: separate concurrent processes, one parallel process, or one at a time, as the
    provider allows (its `up` in the provider table). Every machine that fails is named with its own error."""
    spec = PROVIDERS.get(plan.provider)
    concurrency = spec.up if spec else "serial"
    if concurrency == "one-process":
        batches, workers = [list(names)], 1
    else:
        batches, workers = [[n] for n in names], len(names) if concurrency == "processes" else 1
    failures: dict[str, LabError] = {}

    def run(batch: list[str]) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            for name in batch:
                failures[name] = Timeout(f"no time left to start {name}")
                on_event(name, "failed", "deadline passed")
            return
        for name in batch:
            on_event(name, "creating", "vagrant up")
        vagrant = Vagrant(plan.lab_dir, provider=plan.provider, log_dir=plan.log_dir, timeout=left)
        try:
            vagrant.up(batch, on_progress=_progress(on_event, batch, "creating"))
        except KeyRefused as exc:
            box = f"{plan.box_name} {plan.box_version or ''} ({plan.provider})".replace("  ", " ")
            where = f" (full log: {exc.log_path})" if exc.log_path else ""
            error = LabError(
                refused_key_message(box, exc.machine) + where,
                hint="use a box that authorises Vagrant's insecure key for user core, then `lab destroy` and "
                "`lab up` again",
            )
            for name in batch:
                failures[name] = error
                on_event(name, "failed", error.message.splitlines()[0])
            return
        except LabError as exc:
            for name in batch:
                failures[name] = exc
                on_event(name, "failed", exc.message.splitlines()[0])
            return
        for name in batch:
            on_event(name, "running", "up")

    with ThreadPoolExecutor(max_workers=max(workers, 1), thread_name_prefix="vagrant-up") as pool:
        try:
            list(pool.map(run, batches))
        except KeyboardInterrupt:
            # Vagrant cleans up a machine it was creating when interrupted; wait for that, then stop.
            proc.interrupt_running()
            raise
    if failures:
        raise UpFailed({n: failures[n] for n in names if n in failures}, len(names))


class _TargetsOnceBooted:
    """`vagrant ssh-config` started as soon as every machine being brought up has booted, while Vagrant still
    sets hostnames, networks and provisioners: its 2-4 s of Ruby then no longer delay the first health round.
    Vagrant prints "Machine booted and ready!" (its core's wait-for-communicator step, for every provider)."""

    BOOTED = "Machine booted and ready!"

    def __init__(self, plan: LabPlan, machines: Sequence[str], on_event: NodeEvent, *, enabled: bool):
        self.plan = plan
        self.enabled = enabled  # only worth it when health follows
        self.waiting = set(machines)
        self.forward = on_event
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ssh-config")
        self._future: Future[list[Any]] | None = None
        self._lock = threading.Lock()

    def on_event(self, node: str, phase: str, detail: str) -> None:
        self.forward(node, phase, detail)
        if not self.enabled or self.BOOTED not in detail:
            return
        with self._lock:
            self.waiting.discard(node)
            if not self.waiting and self._future is None:
                self._future = self._pool.submit(ssh_targets, self.plan)

    def targets(self) -> list[Any] | None:
        """The early `vagrant ssh-config`, if it ran and worked (else the caller asks again)."""
        if self._future is None:
            return None
        try:
            return self._future.result()
        except LabError:
            return None

    def __enter__(self) -> _TargetsOnceBooted:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True)


def ssh_targets(plan: LabPlan) -> list[Any]:
    """The lab's machines as SSH targets (`vagrant ssh-config`)."""
    from coreos_lab.cluster.health.targets import targets_from_lab

    return targets_from_lab(plan.lab_dir, plan.provider)


def wait_healthy(
    plan: LabPlan,
    *,
    checks: Sequence[str] = (),
    timeout: float,
    on_event: NodeEvent = _ignore,
    targets: list[Any] | None = None,
) -> Any:
    """Wait until the cluster is healthy (the health module's checks over SSH to every machine); `targets`:
    the machines' SSH targets when the caller has them already. A machine found not running fails at once
    (`MachinesNotRunning`, exit 3)."""
    from coreos_lab.cluster.health import wait_healthy as wait_until_healthy
    from coreos_lab.cluster.health.targets import MachineDown, lab_machines

    down: tuple[MachineDown, ...] = ()
    if targets is None:
        targets, down = lab_machines(plan.lab_dir, plan.provider)
    for target in targets:
        on_event(target.name, "checking", "health")

    def on_update(node: Any) -> None:
        if node.healthy:
            on_event(node.name, "healthy", "")
        else:
            on_event(node.name, "checking", "; ".join(f"{c.name}: {c.detail}" for c in node.failing))

    return wait_until_healthy(
        targets,
        plan.distro,
        checks,
        plan.etcd_members,
        timeout=timeout,
        on_update=on_update,
        etcd_nodes=plan.etcd_nodes,
        down=down,
    )


# -- render and state (owned by render / state; called at the moments lifecycle knows about) --------------------


def render(plan: LabPlan, libvirt_driver: str | None) -> dict[str, Any]:
    """Bring the generated files in line with the configuration the plan was made from (lab.yaml is not read
    again); keeps the cluster's token, mints one for a new one."""
    from coreos_lab.lab.render import render_lab

    if plan.config is None:
        raise LabError("a plan made without its configuration cannot render (a bug)")
    return render_lab(plan.config, libvirt_driver=libvirt_driver).as_dict()


def mark_created(plan: LabPlan) -> None:
    from coreos_lab.lab.state import LabState

    LabState.load(plan.lab_dir).mark_created()


# -- status -------------------------------------------------------------------------------------------------------


@dataclass
class LabStatus:
    lab_dir: Path
    provider: str
    nodes: list[MachineStatus]
    source: str  # vagrant | disk (Vagrant could not ask the provider; states from Vagrant's own records)
    note: str | None = None
    cluster_exists: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "lab_dir": str(self.lab_dir),
            "provider": self.provider,
            "source": self.source,
            "note": self.note,
            "cluster_exists": self.cluster_exists,
            "nodes": [n.as_dict() for n in self.nodes],
        }


def created_on_disk(plan: LabPlan, name: str) -> bool:
    """Whether Vagrant recorded a machine for `name` (its id file): exactly how Vagrant itself tells a created
    machine from a not-created one, readable without the provider."""
    machine = plan.lab_dir / ".vagrant" / "machines" / name
    return any(p.is_file() and p.stat().st_size > 0 for p in machine.glob("*/id"))


def status(plan: LabPlan) -> LabStatus:
    """Every machine's state from `vagrant status`; when the provider is unusable here, from Vagrant's records
    on disk (a machine with no id file is not created, whatever the provider)."""
    from coreos_lab.lab.state import LabState

    exists = LabState.load(plan.lab_dir).cluster_exists
    if not (plan.lab_dir / "Vagrantfile").is_file():
        nodes = [MachineStatus(n, "not_created", plan.provider, "not created") for n in plan.nodes]
        return LabStatus(plan.lab_dir, plan.provider, nodes, "disk", "not rendered yet (`lab render`)", exists)
    vagrant = Vagrant(plan.lab_dir, provider=plan.provider, log_dir=plan.log_dir)
    try:
        return LabStatus(plan.lab_dir, plan.provider, vagrant.status(), "vagrant", None, exists)
    except ToolMissing as exc:
        nodes = [
            MachineStatus(n, "unknown", plan.provider, "created; state unknown")
            if created_on_disk(plan, n)
            else MachineStatus(n, "not_created", plan.provider, "not created")
            for n in plan.nodes
        ]
        return LabStatus(plan.lab_dir, plan.provider, nodes, "disk", exc.message, exists)


# -- halt, destroy, ssh -------------------------------------------------------------------------------------------


def check_nodes(plan: LabPlan, names: Sequence[str]) -> list[str]:
    unknown = [n for n in names if n not in plan.nodes]
    if unknown:
        raise BadInput(
            f"no machine {unknown[0]!r} in {plan.lab_dir / 'lab.yaml'}", hint=f"machines: {', '.join(plan.nodes)}"
        )
    return list(names)


def halt(plan: LabPlan, names: Sequence[str] = (), *, on_event: NodeEvent = _ignore) -> LabStatus:
    with locked_lab(plan.lab_dir, "lab halt"):
        check_nodes(plan, names)
        targets = list(names) or list(plan.nodes)
        if any(created_on_disk(plan, n) for n in targets):
            vagrant = Vagrant(plan.lab_dir, provider=plan.provider, log_dir=plan.log_dir)
            vagrant.halt(list(names), on_progress=_progress(on_event, targets, "halting"))
        return status(plan)


@dataclass
class DestroyResult:
    lab_dir: Path
    destroyed: list[str]
    token_retired: bool

    def as_dict(self) -> dict[str, Any]:
        return {"lab_dir": str(self.lab_dir), "destroyed": self.destroyed, "token_retired": self.token_retired}


def destroy(plan: LabPlan, *, on_event: NodeEvent = _ignore) -> DestroyResult:
    """Destroy every machine and spend the cluster's discovery token for good.

    The token is retired *before* Vagrant runs: a destroy that fails halfway must not leave a token that a
    later cluster could reuse (etcd would find the old members registered). The cluster counts as gone only
    once Vagrant succeeded; until then `up` refuses to render a new token for it.
    """
    from coreos_lab.lab.state import LabState

    with locked_lab(plan.lab_dir, "lab destroy"):
        state = LabState.load(plan.lab_dir)
        retired = state.token is not None
        if retired:
            state.retire_token()
            state.save()
        created = [n for n in plan.nodes if created_on_disk(plan, n)]
        if created:
            vagrant = Vagrant(plan.lab_dir, provider=plan.provider, log_dir=plan.log_dir)
            vagrant.destroy(on_progress=_progress(on_event, created, "destroying"))
        _release_management_network(plan)
        state = LabState.load(plan.lab_dir)
        state.mark_destroyed()
        return DestroyResult(plan.lab_dir, created, retired)


def _management_network_record(plan: LabPlan) -> Path:
    return plan.state_dir / "libvirt-network"  # the UUID of the management network this lab defined


def _own_management_network(plan: LabPlan) -> None:
    """libvirt: define the management network before vagrant-libvirt would, without dnsmasq's ping delay
    (see coreos_lab.vagrant.libvirt); remembered so that `destroy` removes it again."""
    if not plan.management_network:  # set only for a provider with a management network
        return
    from coreos_lab.vagrant.libvirt import create_management_network

    uuid = create_management_network(plan.management_network)
    if uuid:
        atomic_write_text(_management_network_record(plan), uuid + "\n")


def _release_management_network(plan: LabPlan) -> None:
    record = _management_network_record(plan)
    if not record.is_file():
        return
    from coreos_lab.vagrant.libvirt import remove_management_network

    remove_management_network(record.read_text().strip())
    record.unlink()


def ssh_command(plan: LabPlan, name: str, command: Sequence[str] = ()) -> tuple[list[str], dict[str, str]]:
    """The argv and environment to exec for `lab ssh` (a terminal session needs the real tty; with a
    command, `vagrant ssh -c` exits with the command's exit code)."""
    check_nodes(plan, [name])
    vagrant = Vagrant(plan.lab_dir, provider=plan.provider, log_dir=plan.log_dir)
    return vagrant.ssh_argv(name, command), vagrant.exec_env()
