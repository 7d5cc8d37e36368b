"""Benchmark: `lab health` wall time for 1 node and for 9 nodes of the same cluster, measured in one run.

A 9-node cluster (sshd + etcd 3.4 per network namespace, tests/harness/netns.py) is built in the topology
`lab init --nodes 9` renders: the first DEFAULT_ETCD_MEMBERS nodes are etcd members, the others run etcd as a
proxy (`lab health` is told which, as it learns it from a lab's lab.yaml). `lab health --check etcd --check
members` then runs alternately against node 1 alone and against all 9 nodes. Nodes are checked concurrently,
so 9 nodes should cost little more than 1.
Target (issue 7): median(9 nodes) / median(1 node) ≤ 1.5, for that topology.

`--also-all-members` measures a second cluster whose 9 nodes are all members, for information: there every
node's `cluster-health` asks every member for a quorum read (81 instead of 27), and all of that, like every
node's sshd and etcdctl, shares this machine's cores instead of running on 9 machines.

Also for information, on the same cluster: what naming the proxies saves a Flatcar round (a proxy has no v3 API;
unnamed, it is probed in v3 first, which waits out etcdctl's 2 s dial timeout), and the time of one command over
one SSH connection (`true`; with Nagle's algorithm left on it would wait for the peer's delayed ACK, ~40 ms).
Needs root, iproute2, openssh-server, etcd.
Usage: python bench/health_scaling.py [--runs N] [--distro coreos|flatcar] [--also-all-members]
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

from harness.netns import NetnsCluster, netns_cluster

from coreos_lab.cluster.ssh import SSHSession, parse_ssh_config
from coreos_lab.lab.settings import DEFAULT_ETCD_MEMBERS

NODES = 9
TARGET = 1.5


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


def measure(distro: str, members: int, runs: int, *, details: bool = False) -> tuple[float, float]:
    """Medians (1 node, all nodes) in seconds, on a fresh cluster with `members` etcd members; `details` also
    prints the proxy probe's cost and the time per command."""
    with tempfile.TemporaryDirectory(prefix="health-bench-") as tmp, netns_cluster(Path(tmp) / "nodes", NODES) as c:
        c.start_all_etcd(members=members)
        one = c.write_ssh_config(Path(tmp) / "one", [1])
        all_ = c.write_ssh_config(Path(tmp) / "all")
        base = [*lab_argv(), "health", "--distro", distro, "--check", "etcd", "--check", "members"]
        base += ["--members", str(members)]
        # What `lab health LAB_DIR` knows from lab.yaml: which machines run etcd as a proxy.
        proxies = [f"--proxy=core-{i:02d}" for i in range(members + 1, NODES + 1)]
        one_node = [*base, "--ssh-config", str(one)]
        all_nodes = [*base, *proxies, "--ssh-config", str(all_)]
        timed(all_nodes)  # warm-up: page cache, sshd, etcd connections
        ones, alls = [], []
        for _ in range(runs):  # interleaved, so drift in machine load hits both sides alike
            ones.append(timed(one_node))
            alls.append(timed(all_nodes))
        if details:
            flatcar = [*lab_argv(), "health", "--distro", "flatcar", "--check", "etcd", "--check", "members"]
            flatcar += ["--members", str(members), "--ssh-config", str(all_)]
            probe_cost(flatcar, proxies, runs)
            command_time(c, runs)
    return statistics.median(ones), statistics.median(alls)


def probe_cost(flatcar: list[str], proxies: list[str], runs: int) -> None:
    named, probed = [], []
    for _ in range(runs):
        named.append(timed([*flatcar, *proxies]))
        probed.append(timed(flatcar))
    saved = statistics.median(probed) - statistics.median(named)
    print(f"flatcar, all {NODES} nodes, medians of {runs} runs:")
    print(f"  proxies named   {statistics.median(named) * 1000:7.0f} ms")
    print(f"  proxies probed  {statistics.median(probed) * 1000:7.0f} ms  (naming them saves {saved * 1000:.0f} ms)")


def command_time(cluster: NetnsCluster, runs: int) -> None:
    target = parse_ssh_config(cluster.ssh_config([1]))[0]
    times = []
    with SSHSession(target) as session:
        session.run(["true"])  # warm-up
        for _ in range(runs * 10):
            start = time.perf_counter()
            session.run(["true"])
            times.append(time.perf_counter() - start)
    print(
        f"one command over one SSH connection (`true`, median of {len(times)}): {statistics.median(times) * 1000:.1f} ms"
    )


def report(title: str, one: float, all_: float) -> float:
    ratio = all_ / one
    print(title)
    print(f"  1 node   {one * 1000:7.0f} ms")
    print(f"  {NODES} nodes  {all_ * 1000:7.0f} ms")
    print(f"  ratio {ratio:.2f}")
    return ratio


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=11)
    parser.add_argument("--distro", choices=["coreos", "flatcar"], default="coreos")
    parser.add_argument("--also-all-members", action="store_true", help=f"also a cluster of {NODES} etcd members")
    args = parser.parse_args()
    members = min(DEFAULT_ETCD_MEMBERS, NODES)
    ratio = report(
        f"lab health ({args.distro}; {members} etcd members + {NODES - members} proxies, as `lab init --nodes {NODES}`),"
        f" medians of {args.runs} runs:",
        *measure(args.distro, members, args.runs, details=True),
    )
    if args.also_all_members:
        report(f"for information, all {NODES} nodes etcd members:", *measure(args.distro, NODES, args.runs))
    ok = ratio <= TARGET
    print(f"{'PASS' if ok else 'MISS'}: {ratio:.2f} (target <= {TARGET}, lab's topology)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
