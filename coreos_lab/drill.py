"""Failure drills (`lab drill`): take machines, etcd members and network links away from a running cluster on
purpose, and give them back.

The cluster is a lab (its machines through Vagrant and the provider) or the hosts of an OpenSSH config. Faults:
- `stop` / `start`: halt a lab machine the provider's way (`vagrant halt`) and boot it again (`vagrant up`). `start`
  on a running node starts its etcd unit, which undoes `kill-etcd` (and is all `start` can do without a lab).
- `kill-etcd`: stop only the etcd unit (`etcd2` on CoreOS, `etcd-member` on Flatcar) with systemctl over SSH.
- `partition` / `heal`: cut nodes off from the others on the private network while the host still reaches them over
  SSH, and give them back. A lab uses the provider's link control (`set_private_link` in the provider table: the
  private NIC's cable pulled); any other cluster gets packet filtering in the guest, an iptables chain of our own
  (LAB-DRILL) that drops the other hosts' addresses, so that heal removes exactly what partition added.
- `quorum`: the scripted scenario of `run_quorum`, every fault it made undone at the end.

Every input is checked before anything is touched: a refused drill leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import getpass
import secrets
import shlex
import signal
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coreos_lab.cluster.functional import etcd_commands
from coreos_lab.cluster.health import SYSTEM_CLOCK, Clock, EtcdCluster, check_cluster
from coreos_lab.cluster.health.parsers import first_error_line
from coreos_lab.cluster.ssh import CommandTimeout, SSHSession, SSHTarget
from coreos_lab.distros import DISTROS
from coreos_lab.errors import BadInput, ExitCode, LabError
from coreos_lab.junit import Outcome, TestCase, write_junit

if TYPE_CHECKING:
    from coreos_lab.cluster.health.targets import ClusterTargets
    from coreos_lab.lab.plan import LabPlan

CHAIN = "LAB-DRILL"  # the iptables chain a packet-filter partition adds in the guest
COMMAND_TIMEOUT = 60.0  # systemctl stop waits for etcd to exit; iptables may wait for its lock
WRITE_TIMEOUT = 30.0  # etcdctl gives up after 5 s by itself; this only bounds a hung SSH command
KEY_PREFIX = "/coreos-lab/drill"
SUITE = "coreos-lab drill quorum"


# ------------------------------------------------------------------------------------------------ the cluster


@dataclass(frozen=True)
class DrillCluster:
    """The running cluster a drill acts on: its nodes, and the lab when there is one (machines and links are then
    the provider's)."""

    cluster: ClusterTargets
    plan: LabPlan | None = None

    @property
    def names(self) -> list[str]:
        return self.cluster.names

    @property
    def etcd_unit(self) -> str:
        return DISTROS[self.cluster.distro].etcd_unit

    def state(self, node: str) -> str:
        """`running`, or the Vagrant state of a lab machine that is not."""
        return next((m.state for m in self.cluster.down if m.name == node), "running")

    def known(self, nodes: Sequence[str]) -> list[str]:
        """The nodes named, each once, in the order given; `BadInput` naming the first unknown one."""
        for node in nodes:
            if node not in self.names:
                where = f"in {self.plan.lab_dir / 'lab.yaml'}" if self.plan else "among the ssh-config's hosts"
                raise BadInput(f"no node {node!r} {where}", hint=f"nodes: {', '.join(self.names)}")
        return list(dict.fromkeys(nodes))

    def target(self, node: str) -> SSHTarget:
        """The SSH target of a running node; `BadInput` for a machine that is not running."""
        self.known([node])
        for target in self.cluster.targets:
            if target.name == node:
                return target
        state = self.state(node).replace("_", " ")
        raise BadInput(f"{node} is {state}: the drill needs it running", hint=f"`lab drill start {node}` boots it")

    def lab(self, drill: str) -> LabPlan:
        if self.plan is None:
            raise BadInput(
                f"`lab drill {drill}` needs a lab: halting and booting machines is the provider's work, and an "
                "--ssh-config cluster has none",
                hint="`lab drill kill-etcd NODE` stops the etcd member instead; `lab drill start NODE` starts it",
            )
        return self.plan


def lab_cluster(plan: LabPlan) -> DrillCluster:
    """A lab's machines for a drill; `BadInput` when none runs (drills are for running labs)."""
    from coreos_lab.cluster.health.targets import LabNotRunning, cluster_from_lab

    try:
        return DrillCluster(cluster_from_lab(plan), plan)
    except LabNotRunning as exc:
        raise BadInput(f"{exc.message}: drills need a running lab", hint=exc.hint) from exc


@dataclass
class DrillResult:
    """What one fault drill did, a line per node."""

    drill: str
    nodes: list[str]
    actions: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {"drill": self.drill, "nodes": self.nodes, "actions": self.actions}


# ------------------------------------------------------------------------------------------------ on a node


def as_root(target: SSHTarget, argv: Sequence[str]) -> list[str]:
    """`argv` run as root: through `sudo -n` unless the SSH login is root already (the Vagrant user has sudo)."""
    return list(argv) if (target.user or getpass.getuser()) == "root" else ["sudo", "-n", *argv]


def run_as_root(target: SSHTarget, argv: Sequence[str], *, session: SSHSession | None = None) -> str:
    """Run `argv` as root on the node; `LabError` naming the node, the command and its complaint when it fails."""
    with contextlib.ExitStack() as stack:
        if session is None:
            session = stack.enter_context(SSHSession(target))
        result = session.run(as_root(target, argv), timeout=COMMAND_TIMEOUT)
    if result.returncode != 0:
        why = " | ".join((result.stderr or result.stdout).strip().splitlines()[-3:])
        raise LabError(f"{target.name}: `{shlex.join(argv)}` failed (exit {result.returncode}): {why}")
    return result.stdout


def _filter_script(others: Sequence[str]) -> str:
    """Shell lines that drop every packet to and from `others` through the LAB-DRILL chain; with none, that remove
    the chain (and its hooks) again. Either way whatever a previous partition left is removed first."""
    lines = [f"iptables -w -D {hook} -j {CHAIN} 2>/dev/null || true" for hook in ("INPUT", "OUTPUT")] + [
        f"iptables -w -F {CHAIN} 2>/dev/null || true",
        f"iptables -w -X {CHAIN} 2>/dev/null || true",
    ]
    if others:
        lines += ["set -e", f"iptables -w -N {CHAIN}"]
        for address in map(shlex.quote, others):
            lines += [f"iptables -w -A {CHAIN} -s {address} -j DROP", f"iptables -w -A {CHAIN} -d {address} -j DROP"]
        lines += [f"iptables -w -I {hook} -j {CHAIN}" for hook in ("INPUT", "OUTPUT")]
    return "\n".join(lines)


def _check_filter_addresses(dc: DrillCluster) -> None:
    """Packet filtering cuts the other hosts' HostName addresses, so those must be the nodes' own: not a loopback
    address behind forwarded ports (what `vagrant ssh-config` gives), which would cut the guest off from itself."""
    addresses = [t.hostname for t in dc.cluster.targets]
    shared = sorted({a for a in addresses if addresses.count(a) > 1 or a == "localhost" or a.startswith("127.")})
    if shared:
        raise BadInput(
            f"--ssh-config: the hosts' HostName {', '.join(shared)} is no address of one node of its own, so packet "
            "filtering cannot cut a node off by it",
            hint="give each Host its private-network address, or drill a lab by its directory (the provider's link)",
        )


def _set_link(dc: DrillCluster, node: str, up: bool) -> str:
    """Give `node` its private network back (`up`) or cut it off; says how."""
    target = dc.target(node)
    if dc.plan is not None:
        from coreos_lab.vagrant.adapter import machine_id
        from coreos_lab.vagrant.providers import PROVIDERS

        vm = machine_id(dc.plan.lab_dir, node, dc.plan.provider)
        if vm is None:
            raise LabError(f"{node}: Vagrant has no {dc.plan.provider} id for it in {dc.plan.lab_dir / '.vagrant'}")
        return f"{node}: {PROVIDERS[dc.plan.provider].set_private_link(vm, up)}"
    if up:
        run_as_root(target, ["sh", "-c", _filter_script(())])
        return f"{node}: iptables chain {CHAIN} removed"
    others = [t.hostname for t in dc.cluster.targets if t.name != node]
    run_as_root(target, ["sh", "-c", _filter_script(others)])
    return f"{node}: packets to and from {', '.join(others)} dropped (iptables chain {CHAIN})"


# ------------------------------------------------------------------------------------------------ the faults


def _one(dc: DrillCluster, nodes: Sequence[str], drill: str) -> str:
    if len(nodes) != 1:
        raise BadInput(f"name one node: lab drill {drill} [DIR] NODE (nodes: {', '.join(dc.names)})")
    return dc.known(nodes)[0]


def stop(dc: DrillCluster, nodes: Sequence[str]) -> DrillResult:
    """Halt a lab machine (`vagrant halt NODE`)."""
    plan = dc.lab("stop")
    node = _one(dc, nodes, "stop")
    if dc.state(node) != "running":
        return DrillResult("stop", [node], [f"{node}: already {dc.state(node).replace('_', ' ')}"])
    from coreos_lab.vagrant.adapter import Vagrant

    Vagrant(plan.lab_dir, provider=plan.provider, log_dir=plan.log_dir).halt([node])
    return DrillResult("stop", [node], [f"{node}: halted (vagrant halt)"])


def start(dc: DrillCluster, nodes: Sequence[str]) -> DrillResult:
    """Boot a lab machine that is not running (`vagrant up NODE`), or start the etcd unit of a running node."""
    node = _one(dc, nodes, "start")
    if dc.state(node) != "running":
        plan = dc.lab("start")
        from coreos_lab.vagrant.adapter import Vagrant

        Vagrant(plan.lab_dir, provider=plan.provider, log_dir=plan.log_dir).up([node])
        return DrillResult("start", [node], [f"{node}: booted (vagrant up); {dc.etcd_unit} starts with it"])
    run_as_root(dc.target(node), ["systemctl", "start", dc.etcd_unit])
    return DrillResult("start", [node], [f"{node}: {dc.etcd_unit} started (systemctl start)"])


def kill_etcd(dc: DrillCluster, nodes: Sequence[str]) -> DrillResult:
    """Stop only the etcd unit of a node (`systemctl stop`); `start` starts it again."""
    node = _one(dc, nodes, "kill-etcd")
    run_as_root(dc.target(node), ["systemctl", "stop", dc.etcd_unit])
    return DrillResult("kill-etcd", [node], [f"{node}: {dc.etcd_unit} stopped (systemctl stop)"])


def partition(dc: DrillCluster, nodes: Sequence[str]) -> DrillResult:
    """Cut each node named off from the others on the private network; SSH from the host stays."""
    names = dc.known(nodes)
    if not names:
        raise BadInput(f"name the node(s) to cut off: lab drill partition [DIR] NODE… (nodes: {', '.join(dc.names)})")
    if set(names) == set(dc.names):
        raise BadInput(
            f"partition of every node ({', '.join(names)}) leaves no side to cut them off from",
            hint="name the nodes of the minority: `lab drill partition core-03`",
        )
    for node in names:
        dc.target(node)  # every one running, before any is touched
    if dc.plan is None:
        _check_filter_addresses(dc)
    actions: list[str] = []
    try:
        for node in names:
            actions.append(_set_link(dc, node, up=False))
    except BaseException:  # leave no half-made partition behind
        # the node being cut when this came may be cut already (or half): heal it too, harmless where nothing was
        with _undisturbed():
            for node in names[: len(actions) + 1]:
                with contextlib.suppress(LabError):
                    _set_link(dc, node, up=True)
        raise
    return DrillResult("partition", names, actions)


def heal(dc: DrillCluster, nodes: Sequence[str] = ()) -> DrillResult:
    """Give the nodes named (default: every running node) their private network back; harmless where none was cut."""
    names = dc.known(nodes) or [t.name for t in dc.cluster.targets]
    for node in names:
        dc.target(node)
    return DrillResult("heal", names, [_set_link(dc, node, up=True) for node in names])


FAULTS: dict[str, Callable[[DrillCluster, Sequence[str]], DrillResult]] = {
    "stop": stop,
    "start": start,
    "kill-etcd": kill_etcd,
    "partition": partition,
    "heal": heal,
}


# ------------------------------------------------------------------------------------------------ quorum


@dataclass
class Step:
    """One step of the quorum drill: what etcd promises, what it did."""

    name: str
    expected: str
    observed: str = ""
    outcome: Outcome = "skipped"
    seconds: float = 0.0

    def case(self) -> TestCase:
        message = f"expected {self.expected}; observed {self.observed}"
        return TestCase(self.name, "drill.quorum", self.seconds, self.outcome, message, message)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "expected": self.expected,
            "observed": self.observed,
            "outcome": self.outcome,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class QuorumResult:
    members: list[str]
    steps: list[Step]
    undone: list[str]  # every fault undone at the end (and anything that could not be)
    exit_code: ExitCode
    message: str

    @property
    def passed(self) -> bool:
        return self.exit_code == ExitCode.OK

    def as_dict(self) -> dict[str, Any]:
        return {
            "drill": "quorum",
            "passed": self.passed,
            "exit_code": int(self.exit_code),
            "message": self.message,
            "members": self.members,
            "steps": [s.as_dict() for s in self.steps],
            "undone": self.undone,
        }


def quorum_members(dc: DrillCluster) -> list[str]:
    """The etcd members, every one running, at least three; `BadInput` otherwise, before any fault is made."""
    if dc.cluster.down:
        down = ", ".join(f"{m.name} ({m.state})" for m in dc.cluster.down)
        raise BadInput(f"the quorum drill needs every machine running: {down}", hint="`lab drill start NODE` boots it")
    etcd_nodes = dc.cluster.etcd_nodes
    members = [n for n in dc.names if etcd_nodes is None or n in etcd_nodes]
    if len(members) < 3:
        raise BadInput(
            f"the quorum drill needs at least 3 etcd members; this cluster has {len(members)} "
            f"({', '.join(members)}): one member down would already leave no quorum",
            hint="a lab's etcd.members (`lab init --etcd-members 3`)",
        )
    return members


@contextlib.contextmanager
def _undisturbed() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait while faults are undone: a second one must not stop the undo halfway."""
    try:
        previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: signals are not ours to change
        yield
        return
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class QuorumDrill:
    """Healthy → one member down: degraded, and a write through a survivor succeeds → a majority down: unavailable,
    and a write fails or times out → restored: healthy, and the first write is still readable.

    Members are taken down by stopping their etcd unit (as `kill-etcd`; to etcd a halted machine looks the same),
    from the last member on; the first member is the survivor every write goes through. A verdict counts once etcd
    gives it on two rounds in a row: a leader election in between passes through others. `timeout` bounds each
    step's wait; `clock` gives the time (and the pauses) of those waits.
    """

    def __init__(self, dc: DrillCluster, *, timeout: float, clock: Clock = SYSTEM_CLOCK):
        self.dc = dc
        self.members = quorum_members(dc)
        self.timeout = timeout
        self.clock = clock
        size = len(self.members)
        self.survivor = self.members[0]
        self.first_down = self.members[-1:]
        self.majority_down = self.members[size // 2 :]  # down to size // 2 members: one short of a quorum
        self.stopped: list[str] = []  # faults made and not undone yet
        self.keys: list[str] = []  # written (or tried): removed at the end
        self.first_write: tuple[str, str] | None = None  # (key, value) once accepted
        self.sessions = {t.name: SSHSession(t) for t in dc.cluster.targets}

    def plan(self) -> list[tuple[Step, Callable[[], tuple[bool, str]]]]:
        """The steps, each with what it does: a function that makes its fault, if any, and says (passed, observed)."""
        degraded, unavailable = EtcdCluster.DEGRADED, EtcdCluster.UNAVAILABLE
        return [
            (Step("cluster healthy", "healthy"), lambda: self.verdict(EtcdCluster.HEALTHY)),
            (Step(f"{self.first_down[0]} down: cluster degraded", f"{degraded} ({degraded.meaning})"), self.one_down),
            (Step(f"write through {self.survivor} while degraded", "accepted"), self.write_accepted),
            (
                Step(
                    f"{', '.join(self.majority_down)} down: cluster unavailable",
                    f"{unavailable} ({unavailable.meaning})",
                ),
                self.majority_lost,
            ),
            (Step(f"write through {self.survivor} without quorum", "refused or timed out"), self.write_refused),
            (Step("restored: cluster healthy", "healthy"), self.restored),
            (
                Step(f"first write readable on {self.first_down[0]}", "the value written while degraded"),
                self.first_write_readable,
            ),
        ]

    # -- what each step does and observes ------------------------------------------------------------------------

    def one_down(self) -> tuple[bool, str]:
        self.stop_etcd(self.first_down)
        return self.verdict(EtcdCluster.DEGRADED)

    def majority_lost(self) -> tuple[bool, str]:
        self.stop_etcd([n for n in self.majority_down if n not in self.stopped])
        return self.verdict(EtcdCluster.UNAVAILABLE)

    def restored(self) -> tuple[bool, str]:
        for node in list(self.stopped):
            run_as_root(self.dc.target(node), ["systemctl", "start", self.dc.etcd_unit], session=self.sessions[node])
            self.stopped.remove(node)
        return self.verdict(EtcdCluster.HEALTHY)

    def stop_etcd(self, nodes: Sequence[str]) -> None:
        for node in nodes:
            self.stopped.append(node)  # first: undoing a stop that did not happen is harmless
            run_as_root(self.dc.target(node), ["systemctl", "stop", self.dc.etcd_unit], session=self.sessions[node])

    def verdict(self, expected: EtcdCluster) -> tuple[bool, str]:
        """Ask etcd on every node, round after round, until it says `expected` twice in a row or the step's time is
        up; the last verdict, with the survivor's view of the members."""
        cluster = self.dc.cluster
        targets = cluster.targets
        deadline = self.clock.now() + self.timeout
        streak = 0
        while True:
            report = check_cluster(
                targets,
                cluster.distro,
                ["etcd"],
                cluster.members,
                etcd_nodes=cluster.etcd_nodes,
                sessions=[self.sessions[t.name] for t in targets],
            )
            seen = next(n for n in report.nodes if n.name == self.survivor).check("etcd")
            observed = f"{report.etcd_cluster or 'not asked'} ({self.survivor}: {seen.detail if seen else '-'})"
            streak = streak + 1 if report.etcd_cluster == expected else 0
            if streak == 2:
                return True, observed
            if self.clock.now() >= deadline:
                return False, observed
            self.clock.sleep(1.0)

    def _write(self) -> tuple[bool, str, str, str]:
        """(accepted, what happened, key, value) of a fresh key written through the survivor."""
        key, value = f"{KEY_PREFIX}/{secrets.token_hex(8)}", secrets.token_hex(16)
        self.keys.append(key)
        env, put, _, _ = etcd_commands(self.dc.cluster.distro, key, value)
        try:
            result = self.sessions[self.survivor].run(put, env=env, timeout=WRITE_TIMEOUT)
        except CommandTimeout:
            return False, f"timed out: no answer within {WRITE_TIMEOUT:g}s", key, value
        if result.returncode == 0:
            return True, f"accepted: {key}", key, value
        return False, f"refused: {first_error_line(result.stderr) or f'exit {result.returncode}'}", key, value

    def write_accepted(self) -> tuple[bool, str]:
        accepted, observed, key, value = self._write()
        if accepted:
            self.first_write = (key, value)
        return accepted, observed

    def write_refused(self) -> tuple[bool, str]:
        accepted, observed, _, _ = self._write()
        return not accepted, observed

    def first_write_readable(self) -> tuple[bool, str]:
        if self.first_write is None:
            return False, "nothing to read: the write while degraded was not accepted"
        key, value = self.first_write
        reader = self.first_down[0]  # down while it was written: it has caught up since
        env, _, get, _ = etcd_commands(self.dc.cluster.distro, key, value)
        deadline = self.clock.now() + self.timeout
        while True:
            result = self.sessions[reader].run(get, env=env, timeout=WRITE_TIMEOUT)
            got = result.stdout.strip()
            if result.returncode == 0 and got == value:
                return True, f"{key} = {value} on {reader}"
            if self.clock.now() >= deadline:
                return False, f"{key} on {reader}: {got or result.stderr.strip() or 'nothing'}"
            self.clock.sleep(1.0)

    # -- the end ----------------------------------------------------------------------------------------------------

    def undo(self) -> tuple[list[str], bool]:
        """Start every etcd unit still stopped and remove the keys written; what was done, and whether every fault
        was undone."""
        lines: list[str] = []
        undone = True
        with _undisturbed():
            for node in list(self.stopped):
                try:
                    run_as_root(self.dc.target(node), ["systemctl", "start", self.dc.etcd_unit])
                    self.stopped.remove(node)
                    lines.append(f"{node}: {self.dc.etcd_unit} started")
                except LabError as exc:
                    undone = False
                    lines.append(f"{node}: {self.dc.etcd_unit} could not be started: {exc.message}")
            for key in self.keys:
                env, _, _, delete = etcd_commands(self.dc.cluster.distro, key, "")
                try:
                    with SSHSession(self.dc.target(self.survivor)) as session:
                        removed = session.run(delete, env=env, timeout=WRITE_TIMEOUT).returncode == 0
                except LabError:
                    removed = False
                if not removed:  # a leftover key under KEY_PREFIX is no fault, but say so
                    lines.append(f"{key}: left in etcd (not there, or no quorum yet to remove it)")
            for session in self.sessions.values():
                session.close()
        return lines, undone


def run_quorum(
    dc: DrillCluster,
    *,
    timeout: float = 120.0,
    junit: Path | None = None,
    on_step: Callable[[Step], None] = lambda step: None,
    clock: Clock = SYSTEM_CLOCK,
) -> QuorumResult:
    """The quorum drill on a running cluster (see `QuorumDrill`). Exit code 0 only when every step behaved as etcd
    promises, 3 when one did not, 130 when interrupted (Ctrl-C or SIGTERM), 1 when a fault could not be undone.
    Every fault it made is undone at the end in every case; the JUnit report is written in every case too."""
    from coreos_lab.proc import sigterm_as_interrupt

    drill = QuorumDrill(dc, timeout=timeout, clock=clock)
    planned = drill.plan()
    steps = [step for step, _ in planned]
    started = datetime.now(UTC)
    interrupted = False
    undone: list[str] = []
    all_undone = True
    try:
        with sigterm_as_interrupt():
            try:
                for number, (step, act) in enumerate(planned):
                    if number == 1 and steps[0].outcome != "passed":  # no faults on a cluster already in trouble
                        for later in steps[1:]:
                            later.observed = "not run: the cluster was not healthy to begin with"
                            on_step(later)
                        break
                    began = clock.now()
                    try:
                        passed, step.observed = act()
                    except LabError as exc:
                        passed, step.observed = False, f"error: {exc.message}"
                    except KeyboardInterrupt:
                        step.outcome, step.observed = "error", "interrupted"
                        on_step(step)
                        raise
                    finally:
                        step.seconds = clock.now() - began
                    step.outcome = "passed" if passed else "failed"
                    on_step(step)
            except KeyboardInterrupt:
                interrupted = True
                for later in steps:
                    if later.outcome == "skipped" and not later.observed:
                        later.observed = "not run: interrupted"
            finally:
                undone, all_undone = drill.undo()
    finally:
        if junit is not None:
            try:
                write_junit(junit, SUITE, [s.case() for s in steps], started=started)
            except OSError as exc:
                raise LabError(f"--junit {junit}: cannot write the report: {exc.strerror or exc}") from exc
    failed = [s for s in steps if s.outcome == "failed"]
    if interrupted:
        code, message = ExitCode.INTERRUPTED, "interrupted; every fault undone" if all_undone else "interrupted"
    elif not all_undone:
        code, message = ExitCode.ERROR, "a fault could not be undone: " + "; ".join(undone)
    elif failed or steps[0].outcome != "passed":
        names = ", ".join(s.name for s in failed)
        code, message = ExitCode.UNHEALTHY, f"etcd did not behave as it promises: {names}"
    else:
        code, message = ExitCode.OK, f"quorum drill passed: {len(steps)} steps on {len(drill.members)} members"
    return QuorumResult(drill.members, steps, undone, code, message)
