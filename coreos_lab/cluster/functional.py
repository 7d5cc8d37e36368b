"""Functional checks beyond health: the cluster does real work, not just answers health probes.

- etcd round trip: a key written through etcd on the first node is read back on the last one, then removed.
- fleet unit (CoreOS): a small unit started through fleet is seen `active running`, then destroyed.
Both run over SSH (`coreos_lab.cluster.ssh`) with the etcdctl/fleetctl that the distro ships.
"""

from __future__ import annotations

import secrets
import time

from coreos_lab.cluster.health.parsers import parse_fleet_units
from coreos_lab.cluster.ssh import SSHSession, SSHTarget
from coreos_lab.distros import DISTROS
from coreos_lab.errors import Unhealthy

SMOKE_PREFIX = "/coreos-lab/smoke"


def etcd_commands(distro: str, key: str, value: str) -> tuple[dict[str, str], list[str], list[str], list[str]]:
    """The environment and the put, get and delete command lines of `key` in the distro's etcd API."""
    if DISTROS[distro].etcd_api == 2:  # etcd2's etcdctl speaks v2; etcd 3.x's picks v2 from ETCDCTL_API
        return {"ETCDCTL_API": "2"}, ["etcdctl", "set", key, value], ["etcdctl", "get", key], ["etcdctl", "rm", key]
    return (
        {"ETCDCTL_API": "3"},
        ["etcdctl", "put", key, value],
        ["etcdctl", "get", "--print-value-only", key],
        ["etcdctl", "del", key],
    )


def etcd_roundtrip(first: SSHTarget, last: SSHTarget, distro: str, *, timeout: float = 30.0) -> str:
    """Write a fresh key on `first`, read it on `last` (retrying until `timeout`: a follower may lag)."""
    key = f"{SMOKE_PREFIX}/{secrets.token_hex(8)}"
    value = secrets.token_hex(16)
    env, put, get, delete = etcd_commands(distro, key, value)
    with SSHSession(first) as writer:
        wrote = writer.run(put, env=env, timeout=timeout)
        if wrote.returncode != 0:
            raise Unhealthy(f"{first.name}: writing {key} failed (exit {wrote.returncode}): {_tail(wrote.stderr)}")
        try:
            with SSHSession(last) as reader:
                deadline = time.monotonic() + timeout
                while True:
                    read = reader.run(get, env=env, timeout=timeout)
                    if read.returncode == 0 and read.stdout.strip() == value:
                        return f"{key} written on {first.name}, read back on {last.name}"
                    if time.monotonic() >= deadline:
                        seen = read.stdout.strip() or _tail(read.stderr)
                        raise Unhealthy(
                            f"{last.name}: {key} not readable after {timeout:g}s (got: {seen or 'nothing'})"
                        )
                    time.sleep(0.5)
        finally:
            writer.run(delete, env=env, timeout=timeout)


def fleet_unit(first: SSHTarget, *, timeout: float = 120.0) -> str:
    """Start a tiny unit through fleet from `first` and wait until fleet reports it active/running."""
    name = f"lab-smoke-{secrets.token_hex(4)}.service"
    path = f"/tmp/{name}"
    unit = (
        "[Unit]\nDescription=coreos-lab smoke test\n\n[Service]\nExecStart=/bin/sh -c 'while true; do sleep 5; done'\n"
    )
    with SSHSession(first) as session:
        session.run(["sh", "-c", f'printf %s "$1" > {path}', "sh", unit], timeout=timeout)
        started = session.run(["fleetctl", "start", path], timeout=timeout)
        if started.returncode != 0:
            raise Unhealthy(f"{first.name}: fleetctl start {name} failed: {_tail(started.stderr or started.stdout)}")
        try:
            deadline = time.monotonic() + timeout
            while True:
                listed = session.run(["fleetctl", "list-units", "--no-legend", "--full"], timeout=timeout)
                mine = [u for u in parse_fleet_units(listed.stdout) if u.unit == name]
                if mine and mine[0].active == "active" and mine[0].sub == "running":
                    return f"{name} running on {mine[0].machine}"
                if time.monotonic() >= deadline:
                    state = f"{mine[0].active}/{mine[0].sub}" if mine else "not listed"
                    raise Unhealthy(f"{name} not running after {timeout:g}s ({state})")
                time.sleep(2)
        finally:
            session.run(["fleetctl", "destroy", name], timeout=timeout)
            session.run(["rm", "-f", path], timeout=timeout)


def _tail(text: str, lines: int = 3) -> str:
    return " | ".join(text.strip().splitlines()[-lines:])
