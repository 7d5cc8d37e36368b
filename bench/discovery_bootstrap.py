"""Benchmark: wall time from starting N etcd 3.4 members to a healthy cluster, bootstrapped through our
discovery service versus through a plain etcd 3.4 (v2 enabled) used as the discovery backend the way
discovery.etcd.io does (a `<token>/_config/size` key in it; members get `http://…/v2/keys/<token>`).

Both backends run as their own process on loopback; runs alternate between them; one invocation measures all.
Target (issue: discovery): median ours ≤ 1.2× the etcd-backed reference for N = 3 and 5.
Usage: python bench/discovery_bootstrap.py [--runs R] [--sizes 3,5]
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from as_installed import as_installed
from harness.etcd import EtcdLauncher, free_port, wait_healthy
from harness.server_process import ServerProcess


def _discovered_at(log: str) -> float:
    """When etcd logged "found all needed peers" (its zap JSON log), as a Unix time."""
    for line in log.splitlines():
        if "found all needed peers" in line:
            return datetime.fromisoformat(json.loads(line)["ts"].replace("Z", "+00:00")).timestamp()
    raise RuntimeError("a member never logged 'found all needed peers'")


def bootstrap_seconds(discovery_url: str, size: int, work: Path) -> tuple[float, float]:
    """(start → every member healthy, start → every member found all its peers) in seconds."""
    with EtcdLauncher(work) as launcher:
        members = [launcher.member(f"m{i}", discovery=discovery_url) for i in range(1, size + 1)]
        wall = time.time()
        for member in members:
            member.start()
        healthy = wait_healthy(members, timeout=120, interval=0.005)
        discovered = max(_discovered_at(m.log()) for m in members) - wall
        return healthy, discovered


def ours_token(server: ServerProcess, size: int) -> str:
    with urllib.request.urlopen(f"{server.url}/new?size={size}", timeout=10) as response:
        return response.read().decode()


def reference_token(backend_client_url: str, size: int) -> str:
    token = secrets.token_hex(16)
    request = urllib.request.Request(
        f"{backend_client_url}/v2/keys/{token}/_config/size", data=f"value={size}".encode(), method="PUT"
    )
    request.add_header("Content-Type", "application/x-www-form-urlencoded")
    urllib.request.urlopen(request, timeout=10).close()
    return f"{backend_client_url}/v2/keys/{token}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=9, help="runs per backend and size (median reported)")
    parser.add_argument("--sizes", default="3,5")
    args = parser.parse_args()
    as_installed()
    sizes = [int(s) for s in args.sizes.split(",")]

    with tempfile.TemporaryDirectory(prefix="discovery-bench-") as tmp:
        work = Path(tmp)
        (work / "boxes").mkdir()
        server = ServerProcess(work / "boxes", free_port(), log_path=work / "server.log").start()
        backend_launcher = EtcdLauncher(work / "backend")
        try:
            backend = backend_launcher.start("discovery-backend")
            wait_healthy([backend], timeout=60)
            results: dict[tuple[str, int], list[float]] = {}
            phases: dict[tuple[str, int], list[float]] = {}
            for size in sizes:
                for run in range(args.runs):
                    order = ("ours", "etcd") if run % 2 == 0 else ("etcd", "ours")
                    for name in order:
                        url = ours_token(server, size) if name == "ours" else reference_token(backend.client_url, size)
                        healthy, discovered = bootstrap_seconds(url, size, work / f"{name}-{size}-{run}")
                        results.setdefault((name, size), []).append(healthy)
                        phases.setdefault((name, size), []).append(discovered)
        finally:
            backend_launcher.close()
            server.stop()

    ok = True
    for size in sizes:
        ours = statistics.median(results[("ours", size)])
        ref = statistics.median(results[("etcd", size)])
        ratio = ours / ref
        ok = ok and ratio <= 1.2
        print(
            f"N={size}: ours median {ours * 1000:7.1f} ms  etcd-backed median {ref * 1000:7.1f} ms  "
            f"ratio {ratio:.2f} (target <= 1.20)  runs={args.runs}"
        )
        print(f"       ours  {[round(s * 1000) for s in results[('ours', size)]]} ms")
        print(f"       etcd  {[round(s * 1000) for s in results[('etcd', size)]]} ms")
        # The discovery phase alone (what the backend influences; the rest is etcd's own election).
        ours_d = statistics.median(phases[("ours", size)])
        ref_d = statistics.median(phases[("etcd", size)])
        print(
            f"       discovery phase (start -> all peers found): ours {ours_d * 1000:6.1f} ms  "
            f"etcd-backed {ref_d * 1000:6.1f} ms  ratio {ours_d / ref_d:.2f}"
        )
    print("PASS" if ok else "MISS")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
