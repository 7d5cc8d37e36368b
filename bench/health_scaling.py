"""Benchmark: `lab health` against what a user would run instead, a parallel OpenSSH loop asking the same questions.

A 9-node cluster, every node an etcd member (sshd + etcd 3.4 per network namespace, tests/harness/netns.py). The
peer asks every node at once for its own endpoint's health and the member list:

    xargs -P9 -I{} ssh -F CFG {} 'etcdctl endpoint health -w json && etcdctl member list -w json'

`lab health --ssh-config CFG --distro flatcar --check etcd --check members --members 9` asks the same questions
(each member's own health, its member list, plus its status: who leads) and judges the cluster from them. The
two run alternately, so drift in the machine's load hits both alike; medians of --runs each. Target (issue 20):
lab / peer <= 1.0. For information, `--distro coreos` is measured too: CoreOS's etcd2 has no v3 API, so each node
there runs v2 `cluster-health`, which probes every member (N² probes). The load average is printed with the
figures: the nodes' sshd and etcd share this machine's cores with everything else running on it, and on a busy
machine nine ssh processes get more of its CPU than one lab process. So each side's client CPU (user + system of
its own processes, not the nodes') is printed too: it does not depend on the load.
Needs root, iproute2, openssh-server and -client, etcd.
Usage: python bench/health_scaling.py [--runs N] [--key-type ed25519|rsa]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from as_installed import as_installed
from harness.netns import netns_cluster

NODES = 9
TARGET = 1.0
QUESTIONS = "etcdctl endpoint health -w json && etcdctl member list -w json"


REPO = Path(__file__).resolve().parents[1]


def lab_argv() -> list[str]:
    """The checkout's lab (never an installed copy, which may be older), as a user's console script starts."""
    return [sys.executable, "-m", "coreos_lab"]


def timed(argv: list[str], what: str) -> tuple[float, float]:
    """Wall seconds, and CPU seconds (user + system) of the client's own processes (not the nodes')."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    run = subprocess.run(argv, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if run.returncode != 0:
        raise SystemExit(f"{what} failed (exit {run.returncode}):\n{run.stdout}\n{run.stderr}")
    return elapsed, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def peer_argv(config: Path, hosts: list[str]) -> list[str]:
    # as a user types it in a shell: the hosts on stdin, one ssh per host, all at once
    line = f"printf '%s\\n' {' '.join(hosts)} | xargs -P{len(hosts)} -I{{}} ssh -F {config} {{}} '{QUESTIONS}'"
    return ["sh", "-c", line]


def lab_health(config: Path, distro: str) -> list[str]:
    checks = ["--check", "etcd", "--check", "members", "--members", str(NODES)]
    return [*lab_argv(), "health", "--ssh-config", str(config), "--distro", distro, *checks]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=11)
    parser.add_argument(
        "--key-type",
        default="ed25519",
        choices=["ed25519", "rsa"],
        help="the nodes' login key: rsa is what Vagrant's insecure key and the keys Vagrant 2.3 inserts are",
    )
    args = parser.parse_args()
    as_installed()
    os.environ["PYTHONPATH"] = str(REPO)
    with (
        tempfile.TemporaryDirectory(prefix="health-bench-") as tmp,
        netns_cluster(Path(tmp) / "nodes", NODES, key_type=args.key_type) as c,
    ):
        c.start_all_etcd()
        config = c.write_ssh_config(Path(tmp) / "ssh_config")
        hosts = [node.name for node in c.nodes.values()]
        sides = {
            "peer (xargs -P9 ssh)": peer_argv(config, hosts),
            "lab health, flatcar": lab_health(config, "flatcar"),
            "lab health, coreos": lab_health(config, "coreos"),
        }
        for name, argv in sides.items():  # warm-up: page cache, sshd, etcd connections
            timed(argv, name)
        times: dict[str, list[float]] = {name: [] for name in sides}
        cpu: dict[str, list[float]] = {name: [] for name in sides}
        loads = [os.getloadavg()[0]]
        for _ in range(args.runs):  # alternated
            for name, argv in sides.items():
                wall, used = timed(argv, name)
                times[name].append(wall)
                cpu[name].append(used)
            loads.append(os.getloadavg()[0])
    medians = {name: statistics.median(t) for name, t in times.items()}
    peer = medians["peer (xargs -P9 ssh)"]
    print(f"{NODES} etcd members, {args.key_type} login key, medians of {args.runs} alternated runs (load average 1 min: "
          f"{min(loads):.2f}–{max(loads):.2f} over the runs, {os.cpu_count()} cores):")  # fmt: skip
    for name, median in medians.items():
        spread = f"{min(times[name]) * 1000:.0f}–{max(times[name]) * 1000:.0f}"
        used = statistics.median(cpu[name]) * 1000
        print(
            f"  {name:22} {median * 1000:6.0f} ms (range {spread} ms)  ratio {median / peer:.2f}  client CPU {used:4.0f} ms"
        )
    ratio = medians["lab health, flatcar"] / peer
    ok = ratio <= TARGET
    print(f"{'PASS' if ok else 'MISS'}: lab / peer = {ratio:.2f} with the same questions (target <= {TARGET})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
