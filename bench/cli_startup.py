"""Benchmark: `lab --help` start-up against `vagrant --help`, measured in one run.

Target (issue: foundation): median `lab --help` ≤ 0.25 s and ≥ 4× faster than `vagrant --help`.
Usage: python bench/cli_startup.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from as_installed import as_installed


def median_seconds(argv: list[str], runs: int) -> float:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    as_installed()
    # The checkout's lab, never an installed copy on PATH (it may be older).
    os.environ["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    lab_argv = [sys.executable, "-m", "coreos_lab", "--help"]
    vagrant = shutil.which("vagrant")
    if vagrant is None:
        print("vagrant not found: install it (apt-get install --no-install-recommends vagrant)", file=sys.stderr)
        return 4
    lab_s = median_seconds(lab_argv, args.runs)
    vagrant_s = median_seconds([vagrant, "--help"], max(3, args.runs // 3))
    ratio = vagrant_s / lab_s
    print(f"lab --help      median {lab_s * 1000:7.1f} ms  ({' '.join(lab_argv)})")
    print(f"vagrant --help  median {vagrant_s * 1000:7.1f} ms")
    print(f"lab is {ratio:.1f}x faster (target >= 4x, lab <= 250 ms)")
    ok = lab_s <= 0.25 and ratio >= 4
    print("PASS" if ok else "MISS")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
