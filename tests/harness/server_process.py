"""`lab mirror serve` (mirror + discovery) as a separate process on a port the caller fixes, for tests and
benchmarks that restart it: the restarted server keeps the URL etcd was given. Stopped by PID; its stderr
(announce line and access log) goes to a log file.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from harness import processes


class ServerProcess:
    def __init__(
        self, mirror_root: Path, port: int, *, env: dict[str, str] | None = None, log_path: Path | None = None
    ):
        self.mirror_root = Path(mirror_root)
        self.port = port
        self.env = dict(env or {})
        self.log_path = log_path or self.mirror_root.parent / f"server-{port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> ServerProcess:
        env = {**os.environ, **self.env}
        argv = [sys.executable, "-m", "coreos_lab", "mirror", "serve", "--root", str(self.mirror_root)]
        argv += ["--port", str(self.port), "--no-live"]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log_path.read_text()}")
            try:
                urllib.request.urlopen(f"{self.url}/{'0' * 32}", timeout=1)
            except urllib.error.HTTPError:
                return self  # any HTTP answer (this one is a 404) means it is serving
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"server on {self.url} did not answer within {timeout}s")

    def stop(self, timeout: float = 10.0) -> None:
        processes.stop(self.process, timeout)

    def kill(self) -> None:
        """SIGKILL by PID: a crash, not a clean stop."""
        processes.kill(self.process)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
