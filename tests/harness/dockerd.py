"""A private Docker daemon for tests of Docker's own client (Debian's docker.io): its own socket, data root and
config under a temporary directory, the vfs storage driver (no overlay mounts needed), and no networking of its
own (no bridge, no iptables rules), so it touches nothing of the host's. Root only. Stopped by PID; dockerd stops
the containerd it started."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from harness import processes


class Dockerd:
    def __init__(self, work: Path):
        self.work = work
        self.socket = work / "docker.sock"
        self.log_path = work / "dockerd.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> Dockerd:
        self.work.mkdir(parents=True, exist_ok=True)
        config = self.work / "daemon.json"
        config.write_text("{}\n")
        argv = [
            "dockerd",
            f"--config-file={config}",
            f"--data-root={self.work / 'data'}",
            f"--exec-root={self.work / 'exec'}",
            f"--pidfile={self.work / 'dockerd.pid'}",
            f"--host=unix://{self.socket}",
            "--storage-driver=vfs",
            "--bridge=none",
            "--iptables=false",
            "--ip6tables=false",
            "--ip-masq=false",
        ]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"dockerd exited with {self.process.returncode}:\n{self.log_path.read_text()}")
            if self.docker("version", check=False).returncode == 0:
                return self
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"dockerd did not answer on {self.socket} within {timeout}s:\n{self.log_path.read_text()}")

    def docker(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """The docker client against this daemon only (DOCKER_HOST; no user config)."""
        client = shutil.which("docker") or "docker"
        env = {**os.environ, "DOCKER_HOST": f"unix://{self.socket}", "DOCKER_CONFIG": str(self.work / "client")}
        run = subprocess.run(
            [client, *args], capture_output=True, text=True, env=env, timeout=timeout, stdin=subprocess.DEVNULL
        )
        if check and run.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} failed ({run.returncode}):\n{run.stderr}")
        return run

    def stop(self) -> None:
        processes.stop(self.process, timeout=30)

    def __enter__(self) -> Dockerd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
