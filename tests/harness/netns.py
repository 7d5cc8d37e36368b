"""A cluster of real nodes without VMs: network namespaces on a bridge, each with its own sshd and etcd 3.4.

Layout (as coreos-vagrant's): a bridge at 172.17.8.1/24 in the root namespace, node i (1-based) `core-0i` in
namespace `clab-<pid>-<i>` at 172.17.8.(100+i) behind a veth pair. Each node runs sshd (generated host key,
its own config, root logs in with a generated key; a mount namespace gives root an empty home of the node's)
and, on request, etcd 3.4 with `--enable-v2`, bootstrapped through our discovery service (an in-process
server bound on the bridge, where the namespaces reach it) and listening as CoreOS's etcd2 does (clients on
0.0.0.0:2379,4001, peers on the node's IP). The nodes have no route beyond the bridge's subnet, so no traffic
can leave. There is no systemd or fleet in a namespace: tests select the etcd checks, or put stand-in tools on
a node's PATH (`install_tool`) and say so.

The subnet is fixed, so concurrent test runs take turns through an fcntl lock. Everything this harness makes
is named after the PID of the process that made it (`clab<pid>…`), stopped by PID and namespace name, and
leftovers of a crashed run are removed (under the lock) before a new cluster is built.
"""

from __future__ import annotations

import fcntl
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from harness import processes

if TYPE_CHECKING:
    from coreos_lab.server import EmbeddedServer

SUBNET = "172.17.8"
BRIDGE_IP = f"{SUBNET}.1"
LOCK_FILE = Path("/run/lock/coreos-lab-netns.lock")
SSHD = "/usr/sbin/sshd"  # sshd must be started by absolute path (it re-executes itself)
_SESSION_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # sshd's default for root
_PREFIX = "clab"
_NS_NAME = re.compile(rf"^{_PREFIX}-(\d+)-\d+$")
_LINK_NAME = re.compile(rf"^{_PREFIX}(\d+)(?:br|v\d+|p\d+)$")


def node_ip(index: int) -> str:
    return f"{SUBNET}.{100 + index}"


def node_name(index: int) -> str:
    return f"core-{index:02d}"


def sshd_config(listen: str, port: int, host_key: Path, authorized_keys: Path, bin_dir: Path) -> str:
    """A test node's sshd config: key login only (root's too), its own host key and authorized keys, and
    `bin_dir` first on PATH in sessions (stand-in tools). StrictModes off: the files are in a temporary directory."""
    return (
        f"ListenAddress {listen}\nPort {port}\nHostKey {host_key}\nPidFile none\n"
        f"AuthorizedKeysFile {authorized_keys}\nPermitRootLogin prohibit-password\nPubkeyAuthentication yes\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
        "UseDNS no\nMaxStartups 100\nMaxSessions 100\n"
        f"SetEnv PATH={bin_dir}:{_SESSION_PATH}\n"
    )


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def _kill_namespace_pids(namespace: str) -> None:
    for pid in _ip("netns", "pids", namespace, check=False).stdout.split():
        with suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)


def remove_leftovers() -> list[str]:
    """Delete every namespace and link of this harness's naming. Call it holding `subnet_lock`: whoever made
    them then no longer holds the lock, so they are a crashed or half-cleaned run's (even if its PID lives on
    in an unrelated process)."""
    removed: list[str] = []
    for line in _ip("netns", "list").stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if _NS_NAME.match(name):
            _kill_namespace_pids(name)
            _ip("netns", "delete", name, check=False)
            removed.append(name)
    for line in _ip("-o", "link", "show").stdout.splitlines():
        parts = line.split(":")
        name = parts[1].strip().split("@")[0] if len(parts) > 1 else ""
        if _LINK_NAME.match(name):
            _ip("link", "delete", name, check=False)
            removed.append(name)
    return removed


@contextmanager
def subnet_lock(timeout: float = 900.0) -> Iterator[None]:
    """Hold the harness lock: one cluster on 172.17.8.0/24 at a time on this machine."""
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    with LOCK_FILE.open("a") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{LOCK_FILE} still held after {timeout:g}s") from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _wait_for(
    predicate: Callable[[], bool], what: str, timeout: float, proc: subprocess.Popen[bytes] | None, log: Path
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        if predicate():
            return
        time.sleep(0.05)
    raise TimeoutError(f"{what} not ready after {timeout:g}s:\n{log.read_text(errors='replace')[-3000:]}")


def _port_open(ip: str, port: int) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=0.5):
            return True
    except OSError:
        return False


def _etcd_healthy(ip: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{ip}:2379/health", timeout=1) as resp:
            return b'"true"' in resp.read()
    except OSError:
        return False


@dataclass
class Node:
    index: int
    namespace: str
    veth: str
    workdir: Path
    sshd: subprocess.Popen[bytes] | None = None
    etcd: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        return node_name(self.index)

    @property
    def ip(self) -> str:
        return node_ip(self.index)

    @property
    def bin(self) -> Path:
        """Comes first on PATH in SSH sessions (see `NetnsCluster.install_tool`)."""
        path = self.workdir / "bin"
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def prefix(self) -> list[str]:
        """Command prefix that runs a program inside this node."""
        return ["ip", "netns", "exec", self.namespace]


@dataclass
class NetnsCluster:
    """Build with `netns_cluster(...)`; nodes are 1-based like their names."""

    workdir: Path
    count: int
    pid: int = field(default_factory=os.getpid)
    nodes: dict[int, Node] = field(default_factory=dict)
    discovery_server: EmbeddedServer | None = None
    key_type: str = "ed25519"  # of the key every node accepts (bench/health_scaling.py --key-type rsa)
    user_key: Path = field(init=False)
    bridge: str = field(init=False)

    def __post_init__(self) -> None:
        self.bridge = f"{_PREFIX}{self.pid}br"
        self.user_key = self.workdir / f"id_{self.key_type}"

    # ------------------------------------------------------------------ network and sshd

    def build(self) -> None:
        if self.count > 150:
            raise ValueError("the subnet has room for 150 nodes")
        taken = _ip("-o", "-4", "addr", "show").stdout
        if re.search(rf"inet {re.escape(BRIDGE_IP)}/", taken):
            raise RuntimeError(f"{BRIDGE_IP} is already in use on this machine by something other than this harness")
        self.workdir.mkdir(parents=True, exist_ok=True)
        keygen(self.user_key, self.key_type)
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{BRIDGE_IP}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for i in range(1, self.count + 1):
            self._add_node(i)
        for node in self.nodes.values():
            _wait_for(
                partial(_port_open, node.ip, 22), f"sshd on {node.name}", 20, node.sshd, node.workdir / "sshd.log"
            )

    def _add_node(self, i: int) -> None:
        ns = f"{_PREFIX}-{self.pid}-{i}"
        veth, peer = f"{_PREFIX}{self.pid}v{i}", f"{_PREFIX}{self.pid}p{i}"
        node = Node(i, ns, veth, self.workdir / node_name(i))
        self.nodes[i] = node
        node.workdir.mkdir(parents=True, exist_ok=True)
        _ip("netns", "add", ns)
        _ip("link", "add", veth, "type", "veth", "peer", "name", peer)
        _ip("link", "set", peer, "netns", ns)
        _ip("link", "set", veth, "master", self.bridge, "up")
        _ip("-n", ns, "link", "set", peer, "name", "eth0")
        _ip("-n", ns, "addr", "add", f"{node.ip}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        self.start_sshd(i)

    def start_sshd(self, i: int) -> None:
        node = self.nodes[i]
        host_key = node.workdir / "ssh_host_ed25519_key"
        if not host_key.exists():
            keygen(host_key)
        authorized = node.workdir / "authorized_keys"
        authorized.write_text(self.user_key.with_suffix(".pub").read_text())
        config = node.workdir / "sshd_config"
        config.write_text(sshd_config(node.ip, 22, host_key, authorized, node.bin))
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
        log = node.workdir / "sshd.log"
        # Each node gets its own empty home for root (a mount namespace, bind mount): like a fresh node, and the
        # host's shell start-up files (which may be slow) do not run on every SSH command.
        home = node.workdir / "home"
        home.mkdir(exist_ok=True)
        own_home = [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            'mount --bind "$0" /root && exec "$@"',
        ]
        with log.open("ab") as output:
            node.sshd = subprocess.Popen(
                [*node.prefix, *own_home, str(home), SSHD, "-D", "-e", "-f", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
            )

    def install_tool(self, i: int, name: str, script: str) -> Path:
        """Put an executable on node i's PATH, ahead of the system's: a stand-in for a tool that cannot run
        in a namespace (systemctl, fleetctl). Tests that use one must say so."""
        path = self.nodes[i].bin / name
        path.write_text(script)
        path.chmod(0o755)
        return path

    def log_calls(self, i: int, tool: str, env: Sequence[str] = ()) -> Path:
        """Put a logging pass-through in front of the real `tool` on node i: not a stand-in, it changes nothing
        in what the tool does. Each call adds a line to the returned file: the `env` variables named, then the
        arguments (e.g. `ETCDCTL_API=3 endpoint status -w json`)."""
        real = shutil.which(tool)
        if real is None:
            raise FileNotFoundError(f"{tool} is not installed")
        log = self.nodes[i].bin / f"{tool}.calls"
        log.write_text("")
        named = "".join(f"{name}=${{{name}}} " for name in env)
        self.install_tool(i, tool, f'#!/bin/sh\nprintf "%s\\n" "{named}$*" >>"{log}"\nexec {real} "$@"\n')
        return log

    def stop_sshd(self, i: int) -> None:
        processes.stop(self.nodes[i].sshd, timeout=5.0)

    def ssh_config(self, indexes: Sequence[int] | None = None) -> str:
        """An OpenSSH config for the nodes, shaped like `vagrant ssh-config`'s."""
        chosen = indexes or sorted(self.nodes)
        return "".join(ssh_config_entry(node_name(i), node_ip(i), "root", 22, self.user_key) for i in chosen)

    def write_ssh_config(self, path: Path, indexes: Sequence[int] | None = None) -> Path:
        path.write_text(self.ssh_config(indexes))
        return path

    # ------------------------------------------------------------------ etcd

    def initial_cluster(self, indexes: Sequence[int] | None = None) -> str:
        chosen = indexes or sorted(self.nodes)
        return ",".join(f"{node_name(i)}=http://{node_ip(i)}:2380" for i in chosen)

    def etcd_env(self, i: int, *, discovery: str | None = None) -> dict[str, str]:
        """The ETCD_* environment of node i, as coreos-vagrant's sample etcd2 section gives it; bootstrapped
        through the `discovery` token URL, else a static initial cluster of every node."""
        ip = node_ip(i)
        env = {
            "ETCD_NAME": node_name(i),
            "ETCD_ADVERTISE_CLIENT_URLS": f"http://{ip}:2379",
            "ETCD_INITIAL_ADVERTISE_PEER_URLS": f"http://{ip}:2380",
            "ETCD_LISTEN_CLIENT_URLS": "http://0.0.0.0:2379,http://0.0.0.0:4001",
            "ETCD_LISTEN_PEER_URLS": f"http://{ip}:2380,http://{ip}:7001",
        }
        if discovery:
            env["ETCD_DISCOVERY"] = discovery
            env["ETCD_DISCOVERY_FALLBACK"] = "exit"  # fail loudly rather than silently becoming a proxy
        else:
            env.update(
                ETCD_INITIAL_CLUSTER=self.initial_cluster(),
                ETCD_INITIAL_CLUSTER_STATE="new",
                ETCD_INITIAL_CLUSTER_TOKEN=f"{_PREFIX}-{self.pid}",
            )
        return env

    def start_etcd(self, i: int, env: dict[str, str] | None = None, *, wait: bool = False) -> subprocess.Popen[bytes]:
        """Start etcd on node i with `env` (default `etcd_env(i)`); etcd reads its settings from ETCD_* only."""
        node = self.nodes[i]
        settings = dict(env if env is not None else self.etcd_env(i))
        settings.setdefault("ETCD_DATA_DIR", str(node.workdir / "etcd"))
        settings["ETCD_ENABLE_V2"] = "true"
        base = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
        log = node.workdir / "etcd.log"
        with log.open("ab") as output:
            node.etcd = subprocess.Popen(
                [*node.prefix, "etcd"],
                env={**base, **settings},
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        # What a stand-in service manager needs to stop and start this etcd again (tests/harness/etcd_unit.py).
        (node.workdir / "etcd.env").write_text("".join(f"{k}={shlex.quote(v)}\n" for k, v in settings.items()))
        (node.workdir / "etcd.pid").write_text(f"{node.etcd.pid}\n")
        if wait:
            self.wait_etcd([i])
        return node.etcd

    def wait_etcd(self, indexes: Sequence[int] | None = None, timeout: float = 30) -> None:
        for i in indexes or sorted(self.nodes):
            node = self.nodes[i]
            _wait_for(
                partial(_etcd_healthy, node.ip),
                f"etcd on {node.name}",
                timeout,
                node.etcd,
                node.workdir / "etcd.log",
            )

    def start_discovery(self, mirror_root: Path | None = None) -> str:
        """Our discovery service (the lab's server, in-process, serving `mirror_root` or a fresh one) bound on
        the bridge, where the nodes reach it; returns its URL."""
        from coreos_lab.server import EmbeddedServer

        if self.discovery_server is None:
            root = mirror_root or self.workdir / "server"
            root.mkdir(parents=True, exist_ok=True)
            self.discovery_server = EmbeddedServer(root, host=BRIDGE_IP, port=0).start()
        return self.discovery_server.url

    def new_token(self, size: int | None = None) -> str:
        """A fresh discovery token URL for `size` members (default: every node)."""
        from coreos_lab.discovery.client import new_token

        return new_token(self.start_discovery(), size or self.count)

    def start_all_etcd(self, *, members: int | None = None, discovery: str | None = None, wait: bool = True) -> None:
        """Every node's etcd, bootstrapped through a fresh discovery token (or `discovery`, a token URL). With
        `members`, only the first ones are members; the others run etcd as a v2 proxy (the lab's layout)."""
        size = members or self.count
        token = discovery or self.new_token(size)
        for i in sorted(self.nodes):
            env = self.etcd_env(i, discovery=token)
            if i > size:
                env = {"ETCD_NAME": env["ETCD_NAME"], "ETCD_DISCOVERY": token, "ETCD_PROXY": "on"}
                env["ETCD_LISTEN_CLIENT_URLS"] = "http://0.0.0.0:2379,http://0.0.0.0:4001"
            self.start_etcd(i, env)
        if wait:
            self.wait_etcd()

    def kill_etcd(self, i: int, *, settle: float = 120.0) -> None:
        """Kill node i's etcd, then wait up to `settle` seconds until the others answer /health again: if the
        killed member led, the rest elect a new leader first, and until then every member looks unhealthy."""
        node = self.nodes[i]
        if node.etcd is not None and node.etcd.poll() is None:
            node.etcd.kill()
            node.etcd.wait(10)
        others = [n for n in self.nodes.values() if n.index != i and n.etcd is not None and n.etcd.poll() is None]
        deadline = time.monotonic() + settle
        while time.monotonic() < deadline and not all(_etcd_healthy(n.ip) for n in others):
            time.sleep(0.2)

    # ------------------------------------------------------------------ teardown

    def close(self) -> None:
        if self.discovery_server is not None:
            self.discovery_server.stop()
        for node in self.nodes.values():
            processes.stop(node.etcd, timeout=5.0)
            processes.stop(node.sshd, timeout=5.0)
        for node in self.nodes.values():
            _kill_namespace_pids(node.namespace)  # anything else a test started inside it
            _ip("link", "delete", node.veth, check=False)
            _ip("netns", "delete", node.namespace, check=False)
        _ip("link", "delete", self.bridge, check=False)


def ssh_config_entry(name: str, host: str, user: str, port: int, key: Path) -> str:
    """One host of an OpenSSH config, shaped like `vagrant ssh-config`'s."""
    return (
        f"Host {name}\n  HostName {host}\n  User {user}\n  Port {port}\n"
        f"  UserKnownHostsFile /dev/null\n  StrictHostKeyChecking no\n  PasswordAuthentication no\n"
        f"  IdentityFile {key}\n  IdentitiesOnly yes\n  LogLevel FATAL\n\n"
    )


def keygen(path: Path, key_type: str = "ed25519") -> None:
    """A key pair without passphrase: `path` and `path.pub` (`key_type` "rsa": 2048 bits, as Vagrant's)."""
    size = ["-b", "2048"] if key_type == "rsa" else []
    subprocess.run(
        ["ssh-keygen", "-q", "-t", key_type, *size, "-N", "", "-C", "coreos-lab-test", "-f", str(path)],
        check=True,
        capture_output=True,
    )


@contextmanager
def netns_cluster(workdir: Path, count: int = 3, *, key_type: str = "ed25519") -> Iterator[NetnsCluster]:
    """Nodes with sshd up (etcd not started): `with netns_cluster(tmp_path, 3) as cluster: …`."""
    with subnet_lock():
        remove_leftovers()
        cluster = NetnsCluster(workdir, count, key_type=key_type)
        try:
            cluster.build()
            yield cluster
        finally:
            cluster.close()
