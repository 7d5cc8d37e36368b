"""`lab health` without nodes: SSH config mapping, check selection, input errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from harness.cli import lab
from harness.labs import mirror_with_boxes, write_lab
from hypothesis import given, settings
from hypothesis import strategies as st

from coreos_lab.cluster.health import select_checks
from coreos_lab.cluster.ssh import parse_ssh_config, shell_command
from coreos_lab.errors import BadInput, ExitCode

# What `vagrant ssh-config` prints for a two-machine lab (coreos-vagrant), plus a wildcard block.
VAGRANT_SSH_CONFIG = """\
Host core-01
  HostName 127.0.0.1
  User core
  Port 2222
  UserKnownHostsFile /dev/null
  StrictHostKeyChecking no
  PasswordAuthentication no
  IdentityFile /home/me/.vagrant.d/insecure_private_key
  IdentitiesOnly yes
  LogLevel FATAL

Host core-02
  HostName 127.0.0.1
  User core
  Port 2200
  UserKnownHostsFile /dev/null
  StrictHostKeyChecking no
  IdentityFile "/home/me/lab dir/.vagrant/machines/core-02/virtualbox/private_key"
  IdentitiesOnly yes

Host *
  User ignored-because-first-match-wins
  ConnectTimeout 5
"""


def test_vagrant_ssh_config_is_mapped_key_by_key() -> None:
    first, second = parse_ssh_config(VAGRANT_SSH_CONFIG)
    assert (first.name, first.hostname, first.port, first.user) == ("core-01", "127.0.0.1", 2222, "core")
    assert first.identity_files == ("/home/me/.vagrant.d/insecure_private_key",)
    assert first.identities_only is True
    assert first.strict_host_key_checking == "no"
    assert first.known_hosts_files == ("/dev/null",)
    assert second.port == 2200
    assert second.identity_files == ("/home/me/lab dir/.vagrant/machines/core-02/virtualbox/private_key",)
    assert second.address == "core@127.0.0.1:2200"


def test_defaults_come_from_wildcard_blocks_and_openssh() -> None:
    (target,) = parse_ssh_config("Host node\n\nHost *\n  User core\n")
    assert (target.hostname, target.port, target.user) == ("node", 22, "core")
    assert target.strict_host_key_checking == "ask" and not target.identities_only


@pytest.mark.parametrize(("mode", "accepted"), [("no", True), ("accept-new", True), ("yes", False), ("ask", False)])
def test_unknown_host_key_is_accepted_as_ssh_config_says_and_never_saved(
    tmp_path: Path, mode: str, accepted: bool
) -> None:
    import paramiko

    from coreos_lab.cluster.ssh import SSHTarget, host_key_policy, known_hosts_files

    known = tmp_path / "known_hosts"
    other = paramiko.ECDSAKey.generate()
    known.write_text(f"other.example {other.get_name()} {other.get_base64()}\n")
    target = SSHTarget("n", "node.example", strict_host_key_checking=mode, known_hosts_files=(str(known),))
    assert known_hosts_files(target) == ([] if mode == "no" else [str(known)])
    client = paramiko.SSHClient()
    client.load_host_keys(str(known))  # paramiko's AutoAddPolicy would now save a new key into this file
    key = paramiko.ECDSAKey.generate()
    if accepted:
        host_key_policy(target).missing_host_key(client, "node.example", key)
        assert client.get_host_keys().lookup("node.example") == {key.get_name(): key}
    else:
        assert isinstance(host_key_policy(target), paramiko.RejectPolicy)
    assert known.read_text().splitlines() == [f"other.example {other.get_name()} {other.get_base64()}"]


@pytest.mark.parametrize(
    ("text", "message"),
    [("", "no Host entries"), ("Host *\n  User core\n", "no Host entries"), ("Host a\n  Port twenty\n", "Port")],
)
def test_bad_ssh_config_names_the_problem(text: str, message: str) -> None:
    with pytest.raises(BadInput, match=message):
        parse_ssh_config(text, source="cfg")


def test_remote_command_words_are_quoted() -> None:
    assert shell_command(["etcdctl", "get", "a b;rm -rf /"], {"ETCDCTL_API": "3"}) == (
        "env ETCDCTL_API=3 etcdctl get 'a b;rm -rf /'"
    )


def test_cli_offers_exactly_the_health_checks() -> None:
    from coreos_lab.cli.options import CHECK_NAMES as CLI_CHECK_NAMES
    from coreos_lab.cluster.health import CHECK_NAMES

    assert CLI_CHECK_NAMES == CHECK_NAMES


def test_check_selection() -> None:
    assert select_checks("coreos") == ("units", "etcd", "members", "fleet")
    assert select_checks("flatcar", ["members", "etcd"]) == ("etcd", "members")
    with pytest.raises(BadInput, match="distro"):
        select_checks("ubuntu")
    with pytest.raises(BadInput, match="'disk'"):
        select_checks("coreos", ["disk"])


def test_ssh_config_without_distro_is_usage_error(tmp_path: Path) -> None:
    config = tmp_path / "ssh_config"
    config.write_text("Host a\n  HostName 127.0.0.1\n")
    run = lab("health", "--ssh-config", config)
    assert run.returncode == ExitCode.USAGE
    assert "--distro" in run.stderr


@pytest.mark.parametrize("command", ["health", "smoke"])
def test_ssh_config_is_resolved_alike_by_health_and_smoke(tmp_path: Path, command: str) -> None:
    config = tmp_path / "ssh_config"
    config.write_text("Host a\n  HostName 127.0.0.1\n")
    run = lab(command, "--ssh-config", config)
    assert run.returncode == ExitCode.USAGE
    assert "--ssh-config needs --distro (coreos or flatcar)" in run.stderr
    run = lab(command, tmp_path, "--ssh-config", config, "--distro", "coreos")
    assert run.returncode == ExitCode.USAGE
    assert "give either a lab directory or --ssh-config, not both" in run.stderr


def test_ssh_config_proxies_leave_the_other_hosts_as_members(tmp_path: Path) -> None:
    from coreos_lab.cluster.health.targets import cluster_from_ssh_config

    config = tmp_path / "ssh_config"
    config.write_text("".join(f"Host core-0{i}\n  HostName 127.0.0.{i}\n" for i in (1, 2, 3)))
    cluster = cluster_from_ssh_config(config, lab_dir=None, distro="flatcar", members=None, proxies=["core-03"])
    assert [t.name for t in cluster.targets] == ["core-01", "core-02", "core-03"]
    assert (cluster.distro, cluster.members, cluster.etcd_nodes) == ("flatcar", 2, ("core-01", "core-02"))
    plain = cluster_from_ssh_config(config, lab_dir=None, distro="coreos", members=None)
    assert (plain.members, plain.etcd_nodes) == (None, None)  # every node a member


def test_lab_dir_that_is_no_lab_is_usage_error(tmp_path: Path, mirror_root: Path) -> None:
    run = lab("health", tmp_path)
    assert run.returncode == ExitCode.USAGE
    assert "lab.yaml" in run.stderr
    write_lab(tmp_path, mirror_root)  # configured but never rendered
    run = lab("health", tmp_path)
    assert run.returncode == ExitCode.USAGE
    assert "Vagrantfile" in run.stderr


def test_proxy_must_name_a_host_of_the_ssh_config(tmp_path: Path, mirror_root: Path) -> None:
    config = tmp_path / "ssh_config"
    config.write_text("Host core-01\n  HostName 127.0.0.1\nHost core-02\n  HostName 127.0.0.2\n")
    run = lab("health", "--ssh-config", config, "--distro", "flatcar", "--proxy", "core-09")
    assert run.returncode == ExitCode.USAGE
    assert "--proxy core-09: no such Host" in run.stderr and "core-01, core-02" in run.stderr
    lab_dir = write_lab(tmp_path / "lab", mirror_root)
    run = lab("health", lab_dir, "--proxy", "core-02")  # a lab names its proxies in lab.yaml
    assert run.returncode == ExitCode.USAGE
    assert "--proxy goes with --ssh-config" in run.stderr


def test_lab_facts_name_the_etcd_members(tmp_path: Path, mirror_root: Path) -> None:
    from coreos_lab.lab.plan import load_plan

    facts = load_plan(write_lab(tmp_path, mirror_root, nodes=5))
    assert (facts.etcd_members, facts.etcd_nodes) == (3, ("core-01", "core-02", "core-03"))


def test_unknown_check_is_usage_error(tmp_path: Path) -> None:
    config = tmp_path / "ssh_config"
    config.write_text("Host a\n  HostName 127.0.0.1\n")
    run = lab("health", "--ssh-config", config, "--distro", "coreos", "--check", "disk")
    assert run.returncode == ExitCode.USAGE
    assert "disk" in run.stderr


@settings(max_examples=200, deadline=None)
@given(
    text=st.lists(
        st.sampled_from(
            [
                "Host ",
                "HostName ",
                "Port ",
                "User ",
                "IdentityFile ",
                "Match ",
                "*",
                '"',
                "\n",
                " ",
                "a",
                "22",
                "=",
                "~",
            ]
        )
        | st.text(max_size=10),
        max_size=40,
    ).map("".join)
)
def test_ssh_config_garbage_gives_targets_or_bad_input(text: str) -> None:
    try:
        targets = parse_ssh_config(text)
    except BadInput:
        return
    assert targets and all(isinstance(t.port, int) for t in targets)


def test_unreachable_targets_fail_with_the_real_cause(tmp_path: Path) -> None:
    """A listener that never speaks SSH (banner timeout) and a closed port, both on loopback."""
    import socket

    from coreos_lab.cluster.ssh import SSHError, SSHSession, SSHTarget

    with socket.socket() as mute, socket.socket() as closed:
        mute.bind(("127.0.0.1", 0))
        mute.listen(4)
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connect is refused
        cases = {
            mute.getsockname()[1]: "Error reading SSH protocol banner",
            closed.getsockname()[1]: "connection refused",
        }
        for port, cause in cases.items():
            with pytest.raises(SSHError, match=cause):
                SSHSession(SSHTarget("n", "127.0.0.1", port, "core", identities_only=True), connect_timeout=1).connect()


@pytest.mark.integration
@pytest.mark.vagrant
def test_lab_whose_machines_are_not_running_is_unhealthy(tmp_path: Path, mirror_root: Path) -> None:
    """Real Vagrant: `vagrant ssh-config` in a rendered lab whose machines were never created."""
    mirror_with_boxes(mirror_root)
    lab_dir = write_lab(tmp_path / "lab", mirror_root)
    env = {"VAGRANT_HOME": str(tmp_path / "vagrant.d"), "HOME": str(tmp_path)}
    assert lab("render", lab_dir, env=env).returncode == 0
    run = lab("health", lab_dir, env=env)
    assert run.returncode == ExitCode.UNHEALTHY, run.stderr
    assert "not running" in run.stderr and "lab up" in run.stderr
    as_json = lab("health", lab_dir, "--json", env=env)
    assert as_json.returncode == ExitCode.UNHEALTHY
    assert "not running" in as_json.json()["error"]["message"]


class FakeClock:
    """Time that passes only when a round or a pause says so: the rounds' timing is exact on any machine."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.seconds

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.seconds += seconds


@dataclass
class StandInRounds:
    """Stands in for `check_cluster` (one round over every node); the real rounds, over SSH to real etcd, run in
    test_health_netns.py. Each round takes the next of `seconds` on the fake clock (the last one repeats) and
    fails with a real-looking etcd failure until round `healthy_from`. Records when each round started and what
    it was given."""

    clock: FakeClock
    seconds: list[float]
    healthy_from: int | None = None
    started: list[float] = field(default_factory=list)
    kwargs: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, targets, distro, checks, expected, **kwargs):  # type: ignore[no-untyped-def]
        from coreos_lab.cluster.health.report import CheckResult, HealthReport, NodeReport, Status

        self.started.append(self.clock.now())
        self.kwargs.append(kwargs)
        number = len(self.started)
        self.clock.seconds += self.seconds[min(number, len(self.seconds)) - 1]
        if self.healthy_from is not None and number >= self.healthy_from:
            result = CheckResult("etcd", Status.PASS, f"round {number}: 3 of 3 members healthy")
        else:
            result = CheckResult("etcd", Status.FAIL, f"round {number}: cluster is unavailable")
        return HealthReport(distro, expected, ("etcd",), (NodeReport("core-01", "10.0.0.1", (result,)),))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _rounds(
    monkeypatch: pytest.MonkeyPatch, clock: FakeClock, seconds: list[float], healthy_from: int | None = None
) -> StandInRounds:
    import coreos_lab.cluster.health as health

    rounds = StandInRounds(clock, seconds, healthy_from)
    monkeypatch.setattr(health, "check_cluster", rounds)
    return rounds


TARGETS = parse_ssh_config("Host core-01\n  HostName 10.0.0.1\n")


def test_wait_starts_no_round_that_the_deadline_would_cut_short(
    monkeypatch: pytest.MonkeyPatch, clock: FakeClock
) -> None:
    """A round cut short would fail its checks on our own shortened timeouts: the last full round is reported."""
    import coreos_lab.cluster.health as health

    rounds = _rounds(monkeypatch, clock, seconds=[0.4])
    with pytest.raises(health.HealthTimeout) as caught:
        health.wait_healthy(TARGETS, "coreos", ["etcd"], 3, timeout=1.5, first_delay=0.05, clock=clock)
    # Round 3 starts at 0.95 s and ends at 1.35 s; a fourth (0.4 s, judged by the last) would end past 1.5 s.
    assert rounds.started == pytest.approx([0.0, 0.45, 0.95])
    assert clock.sleeps == pytest.approx([0.05, 0.1])  # backoff, shortened so that the next round fits
    assert all(start + 0.4 <= 1.5 for start in rounds.started)
    # Timeouts shrink to the time left (never below 1 s): a round never runs far past the deadline.
    assert [kw["command_timeout"] for kw in rounds.kwargs] == pytest.approx([1.5, 1.05, 1.0])
    assert [kw["connect_timeout"] for kw in rounds.kwargs] == pytest.approx([1.5, 1.05, 1.0])
    assert caught.value.message.startswith("not healthy after 1.5s: core-01 etcd: round 3: cluster is unavailable")
    assert caught.value.report.nodes[0].checks[0].detail == "round 3: cluster is unavailable"


def test_a_round_that_runs_into_the_deadline_is_not_the_one_reported(
    monkeypatch: pytest.MonkeyPatch, clock: FakeClock
) -> None:
    """Judged by the last round (0.4 s), round 3 fits; it takes 0.8 s and ends past the deadline, where our own
    shortened timeouts may have failed its checks (a busy machine): round 2, the last full one, is reported."""
    import coreos_lab.cluster.health as health

    rounds = _rounds(monkeypatch, clock, seconds=[0.4, 0.4, 0.8])
    with pytest.raises(health.HealthTimeout) as caught:
        health.wait_healthy(TARGETS, "coreos", ["etcd"], 3, timeout=1.5, first_delay=0.05, clock=clock)
    assert rounds.started == pytest.approx([0.0, 0.45, 0.95]) and clock.now() == pytest.approx(1.75)
    assert caught.value.report.nodes[0].checks[0].detail == "round 2: cluster is unavailable"
    assert "core-01 etcd: round 2: cluster is unavailable" in caught.value.message


def test_wait_backs_off_and_returns_the_first_healthy_round(monkeypatch: pytest.MonkeyPatch, clock: FakeClock) -> None:
    """README: re-checks with backoff, 0.5 s doubling to 2 s; each node's connection is kept from round to round."""
    import coreos_lab.cluster.health as health

    rounds = _rounds(monkeypatch, clock, seconds=[0.0], healthy_from=7)

    def show(node: Any) -> None: ...

    report = health.wait_healthy(TARGETS, "coreos", ["etcd"], 3, timeout=60, on_update=show, clock=clock)
    assert report.healthy and report.nodes[0].checks[0].detail == "round 7: 3 of 3 members healthy"
    assert clock.sleeps == [0.5, 1.0, 2.0, 2.0, 2.0, 2.0]
    assert rounds.started == [0.0, 0.5, 1.5, 3.5, 5.5, 7.5, 9.5]
    assert all(kw["on_node"] is show for kw in rounds.kwargs)  # each node's state is shown as it comes
    sessions = rounds.kwargs[0]["sessions"]
    assert [s.target for s in sessions] == TARGETS
    assert all(kw["sessions"] is sessions for kw in rounds.kwargs)  # the same connections, round after round


def test_ssh_leaves_invoke_unloaded_until_a_config_runs_match_exec(tmp_path: Path) -> None:
    """paramiko's config module imports invoke only to run `Match exec` lines, at half of paramiko's import time:
    `lab health` loads it only for a config that has one, and such a config still works."""
    import subprocess
    import sys

    probe = (
        "import sys; from coreos_lab.cluster.ssh import parse_ssh_config; print('invoke' in sys.modules);"
        "(t,) = parse_ssh_config(sys.argv[1]); print(t.user, 'invoke' in sys.modules)"
    )
    plain = subprocess.run([sys.executable, "-c", probe, "Host a\n  User core\n"], capture_output=True, text=True)
    assert plain.stdout.split() == ["False", "core", "False"], plain.stderr
    marker = tmp_path / "matched"
    config = f'Match exec "touch {marker}"\n  User matched\nHost a\n  HostName 127.0.0.1\n'
    matched = subprocess.run([sys.executable, "-c", probe, config], capture_output=True, text=True)
    assert matched.stdout.split() == ["False", "matched", "True"], matched.stderr
    assert marker.exists()  # the exec line did run
