"""Nodes without root: one real OpenSSH sshd per node on 127.0.0.1, each on a free port.

For tests that need a real SSH peer but neither root nor network namespaces (tests/harness/netns.py builds
those, with real etcd): every node has its own sshd config, host key and authorized key (written as the
namespace harness writes them) and its own `bin` directory first on PATH in SSH sessions, where a test puts
stand-in tools (`install_tool`) and says so. sshd runs as whoever runs the tests, and so lets only that user
in (StrictModes off: its files are in a temporary directory). Every sshd is started and stopped by its PID.
"""

from __future__ import annotations

import os
import pwd
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from harness import processes
from harness.netns import SSHD, keygen, ssh_config_entry, sshd_config
from harness.ports import free_port
from harness.waiting import wait_until

USER = pwd.getpwuid(os.geteuid()).pw_name  # whom sshd lets in: the user it runs as


@dataclass
class LoopbackNode:
    name: str
    port: int
    workdir: Path
    sshd: subprocess.Popen[bytes] | None = None

    @property
    def bin(self) -> Path:
        """First on PATH in this node's SSH sessions."""
        return self.workdir / "bin"

    @property
    def log(self) -> Path:
        """sshd's own log (`-e`): one "Accepted publickey" line per login."""
        return self.workdir / "sshd.log"

    def install_tool(self, name: str, script: str) -> Path:
        """An executable on this node's PATH, ahead of the system's: a stand-in the test must declare."""
        path = self.bin / name
        path.write_text(script)
        path.chmod(0o755)
        return path


@dataclass
class LoopbackNodes:
    """Build with `loopback_nodes(...)`; `nodes` maps `core-01`… to their node."""

    workdir: Path
    nodes: dict[str, LoopbackNode] = field(default_factory=dict)

    @property
    def user_key(self) -> Path:
        return self.workdir / "id_ed25519"

    def start(self, count: int) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        keygen(self.user_key)
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory: needed only by root's sshd
        for i in range(1, count + 1):
            node = LoopbackNode(f"core-{i:02d}", free_port(), self.workdir / f"core-{i:02d}")
            self.nodes[node.name] = node
            self._start_sshd(node)
        for node in self.nodes.values():
            _wait_listening(node)

    def _start_sshd(self, node: LoopbackNode) -> None:
        node.bin.mkdir(parents=True)
        host_key = node.workdir / "ssh_host_ed25519_key"
        keygen(host_key)
        authorized = node.workdir / "authorized_keys"
        authorized.write_text(self.user_key.with_suffix(".pub").read_text())
        config = node.workdir / "sshd_config"
        config.write_text(sshd_config("127.0.0.1", node.port, host_key, authorized, node.bin))
        with node.log.open("ab") as log:
            node.sshd = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(config)], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )

    def ssh_config(self, names: list[str] | None = None) -> str:
        """An OpenSSH config for the nodes, shaped like `vagrant ssh-config`'s."""
        chosen = [self.nodes[n] for n in names] if names else list(self.nodes.values())
        return "".join(ssh_config_entry(node.name, "127.0.0.1", USER, node.port, self.user_key) for node in chosen)

    def write_ssh_config(self, path: Path, names: list[str] | None = None) -> Path:
        path.write_text(self.ssh_config(names))
        return path

    def close(self) -> None:
        for node in self.nodes.values():
            processes.stop(node.sshd, timeout=5.0)


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _wait_listening(node: LoopbackNode) -> None:
    def listening() -> bool:
        assert node.sshd is not None
        if node.sshd.poll() is not None:
            raise RuntimeError(f"sshd of {node.name} exited with {node.sshd.returncode}:\n{node.log.read_text()}")
        return _accepts(node.port)

    wait_until(listening, lambda: f"sshd of {node.name} listening:\n{node.log.read_text()}")


@contextmanager
def loopback_nodes(workdir: Path, count: int = 3) -> Iterator[LoopbackNodes]:
    """`count` nodes with sshd listening: `with loopback_nodes(tmp_path / "nodes", 3) as nodes: …`."""
    nodes = LoopbackNodes(workdir)
    try:
        nodes.start(count)
        yield nodes
    finally:
        nodes.close()
