"""Real etcd 3.4 members for tests and benchmarks (Debian etcd-server / etcd-client).

`EtcdLauncher` starts members with their own data dir, loopback (or namespace) peer and client URLs, an
optional discovery URL, extra flags and environment, and an optional command prefix such as
`["ip", "netns", "exec", NS]`. Each member's stdout and stderr go to a log file beside its data dir. `close()`
kills every member it started by PID and removes their data dirs; the `etcd_launcher`
fixture calls it in teardown.

Members always run with `--enable-v2` (v2 discovery and `cluster-health` need it) and, when they use
discovery, with `--discovery-fallback exit`, so a misconfigured test fails loudly instead of leaving a proxy.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from harness import processes
from harness.ports import free_port


@dataclass
class EtcdMember:
    name: str
    data_dir: Path
    client_url: str
    peer_url: str
    discovery: str | None = None
    initial_cluster: str | None = None
    extra_flags: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    prefix: list[str] = field(default_factory=list)
    etcd: str = "etcd"
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def log_path(self) -> Path:
        return self.data_dir.with_name(self.data_dir.name + ".log")

    def argv(self) -> list[str]:
        argv = [
            *self.prefix,
            self.etcd,
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.client_url,
            "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--enable-v2",
            "--logger", "zap",
            "--log-outputs", "stderr",
        ]  # fmt: skip
        if self.discovery:
            argv += ["--discovery", self.discovery, "--discovery-fallback", "exit"]
        if self.initial_cluster:
            argv += ["--initial-cluster", self.initial_cluster]
        return argv + list(self.extra_flags)

    def start(self) -> EtcdMember:
        if self.process is not None:
            raise RuntimeError(f"etcd member {self.name} already started (pid {self.process.pid})")
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
        env.update(self.env)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.argv(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env
            )
        return self

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError(f"etcd member {self.name} not started")
        return self.process.pid

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_exit(self, timeout: float) -> int:
        """The member's exit code once it exits; `subprocess.TimeoutExpired` if it is still running."""
        if self.process is None:
            raise RuntimeError(f"etcd member {self.name} not started")
        return self.process.wait(timeout=timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def healthy(self, timeout: float = 1.0) -> bool:
        """etcd's own `/health` answers `{"health":"true"}` once the member has a leader."""
        if self.prefix:
            argv = [*self.prefix, "etcdctl", "--endpoints", self.client_url, "endpoint", "health"]
            argv += ["--command-timeout", f"{timeout}s"]
            return subprocess.run(argv, capture_output=True, timeout=timeout + 5).returncode == 0
        try:
            with urllib.request.urlopen(self.client_url + "/health", timeout=timeout) as response:
                return bool(json.loads(response.read()).get("health") == "true")
        except (OSError, ValueError):
            return False

    def kill(self) -> None:
        """SIGKILL by PID and reap it."""
        processes.kill(self.process)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM by PID, then SIGKILL if it has not exited within `timeout`."""
        processes.stop(self.process, timeout)


class EtcdLauncher:
    """Makes and tracks members under `base_dir`; `close()` kills them all by PID and removes their data."""

    def __init__(self, base_dir: Path, *, host: str = "127.0.0.1", prefix: Sequence[str] = (), etcd: str = "etcd"):
        self.base_dir = Path(base_dir)
        self.host = host
        self.prefix = list(prefix)
        self.etcd = etcd
        self.members: list[EtcdMember] = []

    def member(
        self,
        name: str,
        *,
        discovery: str | None = None,
        initial_cluster: str | None = None,
        extra_flags: Sequence[str] = (),
        env: dict[str, str] | None = None,
        client_port: int | None = None,
        peer_port: int | None = None,
    ) -> EtcdMember:
        """A member (not started yet) with fresh loopback ports and its own data dir."""
        client = client_port or free_port(self.host)
        peer = peer_port or free_port(self.host)
        member = EtcdMember(
            name=name,
            data_dir=self.base_dir / f"{name}.etcd",
            client_url=f"http://{self.host}:{client}",
            peer_url=f"http://{self.host}:{peer}",
            discovery=discovery,
            initial_cluster=initial_cluster,
            extra_flags=list(extra_flags),
            env=dict(env or {}),
            prefix=list(self.prefix),
            etcd=self.etcd,
        )
        self.members.append(member)
        return member

    def start(self, name: str, **kwargs: object) -> EtcdMember:
        return self.member(name, **kwargs).start()  # type: ignore[arg-type]

    def start_cluster(self, size: int, *, discovery: str, name_prefix: str = "m") -> list[EtcdMember]:
        """`size` members named `<prefix>1…`, all started at once against one discovery URL."""
        members = [self.member(f"{name_prefix}{i}", discovery=discovery) for i in range(1, size + 1)]
        return [m.start() for m in members]

    def close(self) -> None:
        # SIGKILL: the data dirs go anyway, and a graceful stop of a whole cluster spends seconds on
        # leader hand-over to members that are leaving too. Tests wanting a graceful stop call `stop()`.
        for member in self.members:
            member.kill()
        for member in self.members:
            shutil.rmtree(member.data_dir, ignore_errors=True)

    def __enter__(self) -> EtcdLauncher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_healthy(members: Sequence[EtcdMember], timeout: float = 30.0, interval: float = 0.02) -> float:
    """Seconds until every member answers healthy; `TimeoutError` with the members' log tails otherwise."""
    start = time.monotonic()
    pending = list(members)
    while pending:
        pending = [m for m in pending if not m.healthy(timeout=0.5)]
        if not pending:
            break
        dead = [m for m in pending if not m.running()]
        if dead or time.monotonic() - start > timeout:
            tails = "\n".join(f"--- {m.name} (running={m.running()}):\n{m.log()[-3000:]}" for m in pending)
            raise TimeoutError(f"etcd members not healthy after {time.monotonic() - start:.1f}s:\n{tails}")
        time.sleep(interval)
    return time.monotonic() - start


def etcdctl(
    *args: str, endpoints: Sequence[str], prefix: Sequence[str] = (), timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """Run etcdctl (API v3) against `endpoints`; the caller checks the return code."""
    argv = [*prefix, "etcdctl", "--endpoints", ",".join(endpoints), *args]
    env = {**os.environ, "ETCDCTL_API": "3"}
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)


def cluster_health(member: EtcdMember) -> list[dict[str, object]]:
    """`etcdctl endpoint health --cluster -w json` through one member: one entry per cluster member."""
    result = etcdctl(
        "endpoint", "health", "--cluster", "-w", "json", endpoints=[member.client_url], prefix=member.prefix
    )
    if result.returncode != 0:
        raise AssertionError(f"etcdctl endpoint health failed ({result.returncode}): {result.stderr}{result.stdout}")
    return list(json.loads(result.stdout))


def member_names(member: EtcdMember) -> list[str]:
    """Names in `etcdctl member list -w json` through one member."""
    result = etcdctl("member", "list", "-w", "json", endpoints=[member.client_url], prefix=member.prefix)
    if result.returncode != 0:
        raise AssertionError(f"etcdctl member list failed ({result.returncode}): {result.stderr}")
    return sorted(m.get("name", "") for m in json.loads(result.stdout)["members"])


@pytest.fixture
def etcd_launcher(tmp_path: Path) -> Iterator[EtcdLauncher]:
    """Members under tmp_path, all stopped by PID and their data dirs removed after the test."""
    launcher = EtcdLauncher(tmp_path / "etcd")
    try:
        yield launcher
    finally:
        launcher.close()
