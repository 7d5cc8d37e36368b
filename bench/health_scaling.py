"""Benchmark: `lab health` wall time for 1 node and for 9 nodes of the same cluster, measured in one run.

A 9-node cluster (sshd + etcd 3.4 per network namespace, tests/harness/netns.py; all 9 etcd members, or
`--etcd-members M` with the rest proxies as in a lab) is built once; then `lab health --check etcd --check
members` runs alternately against node 1 alone and against all 9 nodes. Nodes are checked concurrently, so 9 nodes should cost little more than 1.
Target (issue 7): median(9 nodes) / median(1 node) ≤ 1.5. Needs root, iproute2, openssh-server, etcd.
Usage: python bench/health_scaling.py [--runs N] [--distro coreos|flatcar] [--etcd-members M]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from harness.netns import netns_cluster

NODES = 9


def lab_argv() -> list[str]:
    lab = shutil.which("lab")
    return [lab] if lab else [sys.executable, "-m", "coreos_lab"]


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    run = subprocess.run(argv, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if run.returncode != 0:
        raise SystemExit(f"lab health failed (exit {run.returncode}):\n{run.stderr}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--distro", choices=["coreos", "flatcar"], default="coreos")
    parser.add_argument(
        "--etcd-members",
        type=int,
        default=NODES,
        help=f"etcd members among the {NODES} nodes (the others run etcd as a proxy; a lab's default is 3)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="health-bench-") as tmp, netns_cluster(Path(tmp) / "nodes", NODES) as c:
        c.start_all_etcd(members=args.etcd_members)
        one = c.write_ssh_config(Path(tmp) / "one", [1])
        all_ = c.write_ssh_config(Path(tmp) / "all")
        base = [*lab_argv(), "health", "--distro", args.distro, "--check", "etcd", "--check", "members"]
        base += ["--members", str(args.etcd_members)]
        timed([*base, "--ssh-config", str(all_)])  # warm-up: page cache, sshd, etcd connections
        samples: dict[str, list[float]] = {"1": [], str(NODES): []}
        for _ in range(args.runs):  # interleaved, so drift in machine load hits both sides alike
            samples["1"].append(timed([*base, "--ssh-config", str(one)]))
            samples[str(NODES)].append(timed([*base, "--ssh-config", str(all_)]))
    one_s, all_s = statistics.median(samples["1"]), statistics.median(samples[str(NODES)])
    ratio = all_s / one_s
    print(f"lab health ({args.distro}, {args.etcd_members} etcd members), {args.runs} runs each, medians:")
    print(f"  1 node   {one_s * 1000:7.0f} ms")
    print(f"  {NODES} nodes  {all_s * 1000:7.0f} ms")
    print(f"  ratio {ratio:.2f} (target <= 1.5)")
    ok = ratio <= 1.5
    print("PASS" if ok else "MISS")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
