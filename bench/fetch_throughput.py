"""Benchmark: `lab mirror fetch` of a large box from a local nginx, against the by-hand path, in one run.

The box (random bytes, default 512 MiB) is laid out like a Flatcar release (JSON, DIGESTS) under an nginx
on 127.0.0.1. Compared, each the median of N runs:
  curl             `curl -o box URL` — the raw transfer, no verification
  curl+sha512sum   download, then `sha512sum` (what a careful user does by hand: a second pass)
  lab mirror fetch download hashed on the fly (sha256 + sha512), checked against JSON and DIGESTS, committed
Usage: python bench/fetch_throughput.py [--size-mib N] [--runs N]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from harness.ports import free_port

NGINX_CONF = """daemon off;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log;
events {{ worker_connections 64; }}
http {{
  access_log off;
  sendfile on;
  client_body_temp_path {root}/tmp; proxy_temp_path {root}/tmp; fastcgi_temp_path {root}/tmp;
  uwsgi_temp_path {root}/tmp; scgi_temp_path {root}/tmp;
  types {{ application/json json; }}
  default_type application/octet-stream;
  server {{ listen 127.0.0.1:{port}; root {root}/www; }}
}}
"""


def publish(www: Path, size: int, base: str) -> str:
    """A Flatcar-like release of a random box; returns the box URL path."""
    version = "9999.0.0"
    directory = www / "stable" / "amd64-usr" / version
    directory.mkdir(parents=True)
    box = directory / "flatcar_production_vagrant.box"
    sha256, sha512 = hashlib.sha256(), hashlib.sha512()
    with box.open("wb") as handle:
        for _ in range(size // (1 << 20)):
            chunk = os.urandom(1 << 20)
            sha256.update(chunk)
            sha512.update(chunk)
            handle.write(chunk)
    url = f"{base}/stable/amd64-usr/{version}/{box.name}"
    doc = {
        "name": "flatcar-stable",
        "versions": [
            {
                "version": version,
                "providers": [
                    {"name": "virtualbox", "url": url, "checksum_type": "sha256", "checksum": sha256.hexdigest()}
                ],
            }
        ],
    }
    (directory / "flatcar_production_vagrant.json").write_text(json.dumps(doc))
    (directory / f"{box.name}.DIGESTS").write_text(f"# SHA512 HASH\n{sha512.hexdigest()}  {box.name}\n")
    current = www / "stable" / "amd64-usr" / "current"
    current.mkdir()
    (current / "version.txt").write_text(f"FLATCAR_VERSION={version}\n")
    return url


def median_seconds(run, runs: int) -> float:  # type: ignore[no-untyped-def]
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    for tool in ("nginx", "curl", "sha512sum"):
        if shutil.which(tool) is None:
            print(f"{tool} not found", file=sys.stderr)
            return 4
    lab = shutil.which("lab")
    lab_argv = [lab] if lab else [sys.executable, "-m", "coreos_lab"]
    with tempfile.TemporaryDirectory(prefix="lab-bench-") as tmp:
        root = Path(tmp)
        root.chmod(0o755)  # nginx workers may run as an unprivileged user
        (root / "tmp").mkdir()
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        box_url = publish(root / "www", args.size_mib << 20, base)
        (root / "nginx.conf").write_text(NGINX_CONF.format(root=root, port=port))
        nginx = subprocess.Popen(["nginx", "-p", str(root), "-c", str(root / "nginx.conf")])
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", port)) == 0:
                        break
                time.sleep(0.05)
            out = root / "download.box"
            mirror = root / "mirror"

            def curl() -> None:
                subprocess.run(["curl", "-sSf", "-o", str(out), box_url], check=True)

            def curl_and_sum() -> None:
                curl()
                subprocess.run(["sha512sum", str(out)], check=True, stdout=subprocess.DEVNULL)

            def fetch() -> None:
                shutil.rmtree(mirror, ignore_errors=True)
                subprocess.run(
                    [*lab_argv, "mirror", "fetch", "--root", str(mirror), "--upstream", base],
                    check=True,
                    stderr=subprocess.DEVNULL,
                    env=dict(os.environ, no_proxy="127.0.0.1", NO_PROXY="127.0.0.1"),
                )

            curl_s = median_seconds(curl, args.runs)
            sum_s = median_seconds(curl_and_sum, args.runs)
            lab_s = median_seconds(fetch, args.runs)
        finally:
            nginx.terminate()
            nginx.wait(timeout=10)
    mib = args.size_mib
    print(f"box {mib} MiB from nginx on 127.0.0.1, median of {args.runs}")
    print(f"curl               {curl_s:6.2f} s  {mib / curl_s:7.0f} MiB/s")
    print(f"curl + sha512sum   {sum_s:6.2f} s  {mib / sum_s:7.0f} MiB/s")
    print(
        f"lab mirror fetch   {lab_s:6.2f} s  {mib / lab_s:7.0f} MiB/s  (sha256+sha512 on the fly, verified, committed)"
    )
    print(f"lab / curl {lab_s / curl_s:.2f}x   lab / (curl + sha512sum) {lab_s / sum_s:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
