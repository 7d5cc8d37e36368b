"""Benchmark: `lab up` to a healthy cluster on real VMs (vagrant-libvirt; QEMU/TCG where KVM cannot run guests).

Measured in one run, each case on a fresh lab and a fresh discovery token, destroyed afterwards (an untimed
1-node warm-up first adds the box to Vagrant, which the user pays once, not per lab):
  1 node; 3 nodes brought up concurrently (lab's default for libvirt: one parallel `vagrant up`);
  3 nodes brought up one by one (the same `lab up` with the provider's concurrency switched off).
Target (issue 9): 3 nodes ≤ 1.5 × one node.

Needs root (it creates a network namespace and runs libvirtd in it, like the tests) and the test packages.
Usage: sudo python bench/up_time.py [--repeat N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from as_installed import as_installed  # noqa: E402

# Run inside the namespace: one `lab up` in-process, timed, then `lab destroy`.
CHILD = """
import dataclasses, json, sys, time
from pathlib import Path
from coreos_lab import lifecycle
from coreos_lab.lab.plan import load_plan
from coreos_lab.vagrant import providers

lab_dir, mode = Path(sys.argv[1]), sys.argv[2]
if mode == "one-by-one":  # libvirt then takes the one-machine-at-a-time path
    providers.PROVIDERS["libvirt"] = dataclasses.replace(providers.PROVIDERS["libvirt"], up="serial")
plan = load_plan(lab_dir)
started = time.monotonic()
result = lifecycle.up(plan, timeout=1800)
seconds = time.monotonic() - started
healthy = bool(result.health is not None and getattr(result.health, "healthy", False))
lifecycle.destroy(plan)
print(json.dumps({"seconds": round(seconds, 1), "healthy": healthy}))
"""


def main() -> int:
    from harness.libvirt_box import build_box
    from harness.libvirt_ns import LibvirtNamespace

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=1, help="runs per case (the median is reported)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args()
    as_installed()

    box = build_box()
    cases = [(1, "concurrent"), (3, "concurrent"), (3, "one-by-one")]
    samples: dict[str, list[float]] = {f"{n} node(s), {mode}": [] for n, mode in cases}
    with tempfile.TemporaryDirectory(prefix="lab-bench-") as tmp, LibvirtNamespace() as ns:
        ns.clean()
        env = dict(
            os.environ,
            PYTHONPATH=str(ROOT),
            VAGRANT_HOME=str(Path(tmp) / "vagrant.d"),
            LAB_MIRROR_ROOT=str(Path(tmp) / "boxes"),
        )

        def lab(*argv: str) -> None:
            subprocess.run([sys.executable, "-m", "coreos_lab", *argv], env=env, check=True, capture_output=True)

        lab("mirror", "import", str(box), "--name", "flatcar-stable", "--version", "1.0.0", "--provider", "libvirt")
        # A first, untimed 1-node lab adds the box to Vagrant (once per Vagrant home), so no case pays for it.
        runs = [("warm-up", 1, "concurrent")] + [
            (str(run), nodes, mode) for run in range(args.repeat) for nodes, mode in cases
        ]
        for run, nodes, mode in runs:
            lab_dir = Path(tmp) / f"lab-{nodes}-{mode}-{run}"
            lab("init", str(lab_dir), "--nodes", str(nodes), "--distro", "flatcar", "--provider", "libvirt",
                "--memory", "512", "--mirror-url", "http://127.0.0.1:18080")  # fmt: skip
            out = subprocess.run(
                [*ns.prefix(), sys.executable, "-c", CHILD, str(lab_dir), mode],
                env=env, check=True, capture_output=True, text=True,
            )  # fmt: skip
            result = json.loads(out.stdout.strip().splitlines()[-1])
            if not result["healthy"]:
                raise SystemExit(f"{nodes} node(s) {mode}: not healthy after {result['seconds']} s")
            if run != "warm-up":
                samples[f"{nodes} node(s), {mode}"].append(result["seconds"])
            ns.clean()
    medians = {case: statistics.median(values) for case, values in samples.items()}
    one = medians["1 node(s), concurrent"]
    report = {
        "median_seconds": medians,
        "ratio_3_concurrent_to_1": round(medians["3 node(s), concurrent"] / one, 2),
        "ratio_3_one_by_one_to_1": round(medians["3 node(s), one-by-one"] / one, 2),
        "target_ratio": 1.5,
        "runs": args.repeat,
        "samples_seconds": samples,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for case, seconds in medians.items():
            runs = ", ".join(f"{v:.1f}" for v in samples[case])
            print(f"{case:28} {seconds:7.1f} s  ({seconds / one:.2f} x one node)  runs: {runs}")
        verdict = "meets" if report["ratio_3_concurrent_to_1"] <= 1.5 else "misses"
        print(f"3 nodes concurrently {verdict} the target of ≤ 1.5 x one node")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
