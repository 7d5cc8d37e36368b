"""Benchmark: `lab up` to a healthy cluster against what a user does by hand, on real VMs (vagrant-libvirt;
QEMU/TCG where KVM cannot run guests).

The user's way, on the same rendered lab (`lab render`) with the box already added and the mirror serving:
`vagrant up`, then `vagrant ssh core-01 -c '…etcdctl…'` again and again until every etcd member has started and
`etcdctl cluster-health` passes (the test box's CoreOS-like etcd, asked in v2 as lab asks CoreOS). Lab's way:
`lab up --check etcd --check members`, which waits until those checks pass (the box has no fleet to check).
Both with 1 and 3 nodes, in one run, alternated (which goes first swaps each round), each on a fresh lab and a
fresh discovery token, destroyed afterwards. An untimed 1-node `lab up` first adds the box to Vagrant and fills
lab's caches, which a user pays once, not per lab. One mirror server (`lab mirror serve`) serves both sides.
Target (issue 20): lab ≤ 1.0 × the user's way for 3 nodes. Each run's line also says when each phase began
(lab: from the line it prints per machine when the machine's phase changes; the user's way: when `vagrant up`
ended, and how many probes followed); `--json` has them under `phases`.

Needs root (it creates a network namespace and runs libvirtd in it, like the tests) and the test packages.
Usage: sudo python bench/up_time.py [--repeat N] [--nodes 1,3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from as_installed import as_installed  # noqa: E402

MIRROR_PORT = 18080
TIMEOUT = 1800.0


def healthy_probe(nodes: int) -> str:
    """The user's check, run on core-01 (the box's CoreOS-like etcd, asked in v2 as lab asks CoreOS): every
    member started (an unstarted one is listed without a name), and `cluster-health` passes (exit 0)."""
    return f"export ETCDCTL_API=2; test \"$(etcdctl member list | grep -c ' name=')\" -eq {nodes} && etcdctl cluster-health"


def main() -> int:
    from harness.libvirt_box import build_box
    from harness.libvirt_ns import LibvirtNamespace

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=1, help="rounds per node count (the median is reported)")
    parser.add_argument("--nodes", default="1,3", help="node counts, comma-separated")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args()
    as_installed()
    counts = [int(n) for n in args.nodes.split(",")]

    box = build_box()
    samples: dict[str, list[float]] = {f"{n} node(s), {side}": [] for n in counts for side in ("vagrant", "lab")}
    # Per run: when each phase began (lab: seconds to its first machine's line), or the user's way's split.
    timelines: dict[str, list[dict[str, float]]] = {case: [] for case in samples}
    loads: list[float] = []
    with tempfile.TemporaryDirectory(prefix="lab-bench-") as tmp, LibvirtNamespace() as ns:
        ns.clean()
        env = dict(
            os.environ,
            PYTHONPATH=str(ROOT),
            VAGRANT_HOME=str(Path(tmp) / "vagrant.d"),
            LAB_MIRROR_ROOT=str(Path(tmp) / "boxes"),
            XDG_CACHE_HOME=str(Path(tmp) / "cache"),
            VAGRANT_CHECKPOINT_DISABLE="1",
            VAGRANT_BOX_UPDATE_CHECK_DISABLE="1",
            VAGRANT_DEFAULT_PROVIDER="libvirt",
        )
        vagrant = shutil.which("vagrant") or "vagrant"

        def run(argv: list[str], **kw) -> subprocess.CompletedProcess[str]:
            return subprocess.run([*ns.prefix(), *argv], env=env, capture_output=True, text=True, **kw)

        def lab(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
            return run([sys.executable, "-m", "coreos_lab", *argv], check=check)

        def new_lab(name: str, nodes: int) -> Path:
            lab_dir = Path(tmp) / name
            lab("init", str(lab_dir), "--nodes", str(nodes), "--distro", "coreos", "--provider", "libvirt",
                "--memory", "512", "--mirror-url", f"http://127.0.0.1:{MIRROR_PORT}")  # fmt: skip
            return lab_dir

        def lab_way(lab_dir: Path) -> tuple[float, dict[str, float]]:
            started = time.monotonic()
            # The questions the user's probe asks (the test box has no fleet, which a CoreOS lab also checks).
            argv = [sys.executable, "-m", "coreos_lab", "up", str(lab_dir), "--check", "etcd", "--check", "members"]
            with subprocess.Popen(
                [*ns.prefix(), *argv, "--json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            ) as up:
                assert up.stderr is not None and up.stdout is not None
                # Off a terminal lab prints a line per machine when its phase changes: when did each phase begin?
                phases: dict[str, float] = {}
                lines = []
                for line in up.stderr:
                    lines.append(line)
                    phase = line.partition(": ")[2].split(" (")[0].strip()
                    if phase:
                        phases.setdefault(phase, round(time.monotonic() - started, 1))
                out = up.stdout.read()
            seconds = time.monotonic() - started
            doc = json.loads(out) if up.returncode == 0 else {}
            if not (doc.get("health") or {}).get("healthy"):
                raise SystemExit(f"lab up {lab_dir.name}: not healthy (exit {up.returncode})\n{''.join(lines)}")
            lab("destroy", str(lab_dir), "--force")
            return seconds, phases

        def user_way(lab_dir: Path, nodes: int) -> tuple[float, dict[str, float]]:
            lab("render", str(lab_dir))  # the same rendered lab, untimed: the user has it already
            started = time.monotonic()
            up = run([vagrant, "up"], cwd=lab_dir, timeout=TIMEOUT)
            if up.returncode != 0:
                raise SystemExit(f"vagrant up {lab_dir.name} failed\n{up.stdout[-3000:]}{up.stderr[-3000:]}")
            phases = {"vagrant up done": round(time.monotonic() - started, 1), "probes": 0.0}
            while True:
                probe = run([vagrant, "ssh", "core-01", "-c", healthy_probe(nodes)], cwd=lab_dir, timeout=120)
                phases["probes"] += 1
                if probe.returncode == 0:
                    break
                if time.monotonic() - started > TIMEOUT:
                    raise SystemExit(f"{lab_dir.name}: not healthy within {TIMEOUT:g} s\n{probe.stderr[-2000:]}")
            seconds = time.monotonic() - started
            run([vagrant, "destroy", "--force"], cwd=lab_dir, timeout=600)
            return seconds, phases

        lab("mirror", "import", str(box), "--name", "coreos-stable", "--version", "1.0.0", "--provider", "libvirt")
        # Inside the namespace, which this run made: guests reach it at their management network's gateway.
        server = subprocess.Popen(
            [*ns.prefix(), sys.executable, "-m", "coreos_lab", "mirror", "serve", "--host", "0.0.0.0",
             "--port", str(MIRROR_PORT)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        try:
            lab_way(new_lab("warm-up", 1))
            ns.clean()
            for round_ in range(args.repeat):
                for nodes in counts:
                    sides = ["vagrant", "lab"] if round_ % 2 == 0 else ["lab", "vagrant"]
                    for side in sides:
                        lab_dir = new_lab(f"{side}-{nodes}-{round_}", nodes)
                        loads.append(os.getloadavg()[0])
                        seconds, phases = lab_way(lab_dir) if side == "lab" else user_way(lab_dir, nodes)
                        samples[f"{nodes} node(s), {side}"].append(round(seconds, 1))
                        timelines[f"{nodes} node(s), {side}"].append(phases)
                        ns.clean()
                        marks = ", ".join(f"{k} {v:g}" for k, v in phases.items())
                        print(f"{nodes} node(s), {side}: {seconds:.1f} s ({marks})", file=sys.stderr, flush=True)
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
    medians = {case: statistics.median(values) for case, values in samples.items()}
    ratios = {f"{n} node(s)": round(medians[f"{n} node(s), lab"] / medians[f"{n} node(s), vagrant"], 2) for n in counts}
    report = {
        "median_seconds": medians,
        "ratio_lab_to_vagrant": ratios,
        "target_ratio_3_nodes": 1.0,
        "runs": args.repeat,
        "load_average_at_starts": [round(v, 2) for v in loads],
        "samples_seconds": samples,
        "phases": timelines,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for n in counts:
            peer, ours = medians[f"{n} node(s), vagrant"], medians[f"{n} node(s), lab"]
            print(
                f"{n} node(s): vagrant up + ssh loop {peer:7.1f} s   lab up {ours:7.1f} s   lab/vagrant {ours / peer:.2f}"
            )
        print(f"load average at each start: {', '.join(f'{v:.2f}' for v in loads)}")
        if 3 in counts:
            verdict = "meets" if ratios["3 node(s)"] <= 1.0 else "misses"
            print(f"3 nodes: lab {verdict} the target of ≤ 1.0 × the user's way")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
