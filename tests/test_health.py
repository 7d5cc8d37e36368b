"""`lab health` without nodes: SSH config mapping, check selection, input errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness.cli import lab
from harness.labs import mirror_with_boxes, write_lab
from hypothesis import given, settings
from hypothesis import strategies as st

from coreos_lab.errors import BadInput, ExitCode
from coreos_lab.health import select_checks
from coreos_lab.ssh import parse_ssh_config, shell_command

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
    from coreos_lab.health import CHECK_NAMES

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
    from coreos_lab.health.targets import lab_facts

    facts = lab_facts(write_lab(tmp_path, mirror_root, nodes=5))
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
    import time

    from coreos_lab.ssh import SSHError, SSHSession, SSHTarget

    with socket.socket() as mute, socket.socket() as closed:
        mute.bind(("127.0.0.1", 0))
        mute.listen(4)
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connect is refused
        cases = {
            mute.getsockname()[1]: "Error reading SSH protocol banner",
            closed.getsockname()[1]: "connection refused",
        }
        for port, cause in cases.items():
            started = time.monotonic()
            with pytest.raises(SSHError, match=cause):
                SSHSession(SSHTarget("n", "127.0.0.1", port, "core", identities_only=True), connect_timeout=1).connect()
            assert time.monotonic() - started < 5


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


def test_wait_starts_no_round_that_the_deadline_would_cut_short(monkeypatch: pytest.MonkeyPatch) -> None:
    """A round cut short would fail its checks on our own shortened timeouts: the last full round is reported.
    The rounds are stood in for (0.4 s each, always a real-looking failure); the real ones run in
    test_health_netns.py."""
    import time

    import coreos_lab.health as health
    from coreos_lab.health.report import CheckResult, HealthReport, NodeReport, Status

    rounds: list[tuple[float, float]] = []  # (command timeout given, seconds left before the deadline)
    deadline = time.monotonic() + 1.5

    def one_round(targets, distro, checks, expected, *, command_timeout, **kw):  # type: ignore[no-untyped-def]
        rounds.append((command_timeout, deadline - time.monotonic()))
        time.sleep(0.4)
        failed = CheckResult("etcd", Status.FAIL, f"round {len(rounds)}: cluster is unavailable")
        return HealthReport(distro, expected, ("etcd",), (NodeReport("core-01", "10.0.0.1", (failed,)),))

    monkeypatch.setattr(health, "check_cluster", one_round)
    targets = parse_ssh_config("Host core-01\n  HostName 10.0.0.1\n")
    with pytest.raises(health.HealthTimeout) as caught:
        health.wait_healthy(targets, "coreos", ["etcd"], 3, timeout=1.5, first_delay=0.05)
    assert time.monotonic() <= deadline + 0.05  # no round ran past the deadline
    assert len(rounds) >= 2 and all(left >= 0.4 for _, left in rounds)
    assert f"round {len(rounds)}: cluster is unavailable" in caught.value.message
