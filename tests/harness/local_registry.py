"""A real registry for the tests: Debian's `docker-registry` (the Distribution registry) on 127.0.0.1, plain
HTTP, storage in a directory of the test's, stopped by PID; images go in with `skopeo copy`
(`harness.etcd_image.push`), as into any registry."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

from harness.ports import free_port
from harness.processes import stop
from harness.waiting import wait_until

CONFIG = """version: 0.1
log: {{level: error}}
storage:
  filesystem: {{rootdirectory: {storage}}}
http:
  addr: 127.0.0.1:{port}
"""


@dataclass(frozen=True)
class Registry:
    directory: Path
    port: int

    @property
    def host(self) -> str:
        """`127.0.0.1:PORT`, as image references name it."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def storage(self) -> Path:
        return self.directory / "storage"

    def blob_data(self, digest: str) -> Path:
        """Where the filesystem driver keeps a blob's bytes (to damage one the way a bad disk would)."""
        hexdigest = digest.removeprefix("sha256:")
        return self.storage / "docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest / "data"


@contextmanager
def registry(directory: Path) -> Iterator[Registry]:
    """`docker-registry serve` on a free loopback port, storage under `directory`, for the block."""
    executable = shutil.which("docker-registry")
    assert executable, (
        "docker-registry (Debian's Distribution registry) is a test dependency (scripts/system-packages.sh)"
    )
    directory.mkdir(parents=True, exist_ok=True)
    running = Registry(directory, free_port())
    config = directory / "config.yml"
    config.write_text(CONFIG.format(storage=running.storage, port=running.port))
    with (directory / "registry.log").open("wb") as log:
        process = subprocess.Popen([executable, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: _answers(running.url), lambda: f"docker-registry on {running.host}", timeout=60)
        yield running
    finally:
        stop(process)


def _answers(url: str) -> bool:
    try:
        return requests.get(f"{url}/v2/", timeout=2).status_code == 200
    except requests.RequestException:
        return False
