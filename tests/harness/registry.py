"""A real registry for the tests: Debian's `docker-registry` (the Distribution registry) on 127.0.0.1, plain
HTTP, storage in a directory of the test's; images go in with `skopeo copy`, as into any registry."""

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
    host: str  # host:port, as image references name it
    storage: Path

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def push(
        self, layout: Path, ref_name: str, target: str, *, all_platforms: bool = False, docker: bool = False
    ) -> None:
        """Copy `ref_name` from the OCI layout directory `layout` to `<registry>/<target>` (`coreos/etcd:v3.5.16`);
        `docker`: as a Docker schema 2 manifest (list) instead of OCI."""
        argv = ["skopeo", "copy", "--quiet", "--dest-tls-verify=false"]
        argv += ["--all"] if all_platforms else []
        argv += ["--format", "v2s2"] if docker else []
        subprocess.run([*argv, f"oci:{layout}:{ref_name}", f"docker://{self.host}/{target}"], check=True)

    def blob_file(self, digest: str) -> Path:
        """Where the registry keeps a blob (to damage one the way a bad disk would)."""
        hexdigest = digest.removeprefix("sha256:")
        return self.storage / "docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest / "data"


@contextmanager
def docker_registry(base: Path) -> Iterator[Registry]:
    """`docker-registry serve` on a free loopback port for the block; stopped by PID."""
    executable = shutil.which("docker-registry")
    assert executable, (
        "docker-registry (Debian's Distribution registry) is a test dependency (scripts/system-packages.sh)"
    )
    port = free_port()
    storage = base / "registry"
    storage.mkdir(parents=True)
    config = base / "registry.yml"
    config.write_text(CONFIG.format(storage=storage, port=port))
    log = (base / "registry.log").open("wb")
    process = subprocess.Popen([executable, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    registry = Registry(f"127.0.0.1:{port}", storage)
    try:
        wait_until(lambda: _answers(registry.url), lambda: f"docker-registry on {registry.host}", timeout=60)
        yield registry
    finally:
        stop(process)
        log.close()


def _answers(url: str) -> bool:
    try:
        return requests.get(f"{url}/v2/", timeout=2).status_code == 200
    except requests.RequestException:
        return False
