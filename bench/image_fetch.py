"""Benchmark: `lab mirror image fetch` against `skopeo copy … oci:`, pulling the same image from the same local
registry in the same run.

The image (random, incompressible bytes in several gzip layers, about 100 MiB in all) is built offline and
pushed with skopeo to Debian's docker-registry on 127.0.0.1. Each round pulls it into an empty directory with
each tool, alternating which goes first; both verify every blob's sha256. Printed: the median of each, the
ratio lab / skopeo (target ≤ 1.0), and what of lab's time is starting Python and importing its libraries
(click, requests), which a Go binary like skopeo does not pay.
Usage: python bench/image_fetch.py [--layers-mib 40,25,15,10,10] [--rounds 5] [--jobs N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from harness.oci_images import build_random_image, seed, skopeo
from harness.registry import registry

REPO = Path(__file__).resolve().parent.parent
NAME = "bench/random"


def timed(run) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers-mib", default="40,25,15,10,10", help="layer sizes in MiB, comma-separated")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=None, help="lab's --jobs (default: lab's default)")
    args = parser.parse_args()
    for tool in ("docker-registry", "skopeo"):
        if shutil.which(tool) is None:
            print(f"{tool} not found (scripts/system-packages.sh lists it in TEST_PACKAGES)", file=sys.stderr)
            return 4
    sizes = [int(s) << 20 for s in args.layers_mib.split(",")]
    # The checkout's lab, not an installed one; no proxy between the tools and the registry. Its bytecode is
    # compiled first and kept, as `pip install` does: a lab that compiles its modules on every run is not one a user has.
    env = dict(os.environ, PYTHONPATH=str(REPO), no_proxy="127.0.0.1", NO_PROXY="127.0.0.1")
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "coreos_lab")], check=True, env=env)
    with tempfile.TemporaryDirectory(prefix="lab-bench-") as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        build_random_image(work / "layout", "random", sizes)
        built = time.perf_counter() - started
        total = sum(p.stat().st_size for p in (work / "layout" / "blobs" / "sha256").iterdir())
        with registry(work / "registry") as running:
            seed(f"oci:{work / 'layout'}:random", running.host, f"{NAME}:1")
            reference = f"{running.host}/{NAME}:1"
            lab_argv = [sys.executable, "-m", "coreos_lab", "mirror", "image", "fetch", reference]
            lab_argv += ["--root", str(work / "mirror")] + (["--jobs", str(args.jobs)] if args.jobs else [])

            def lab() -> None:
                shutil.rmtree(work / "mirror", ignore_errors=True)
                subprocess.run(lab_argv, check=True, env=env, stderr=subprocess.DEVNULL)

            def skopeo_copy() -> None:
                shutil.rmtree(work / "oci", ignore_errors=True)
                skopeo("copy", "--src-tls-verify=false", f"docker://{reference}", f"oci:{work / 'oci'}:random")

            def startup() -> None:  # what a fetch imports when stderr is not a terminal (no progress bar)
                imports = "import coreos_lab.cli, coreos_lab.mirror.images.fetch, requests"
                subprocess.run([sys.executable, "-c", imports], check=True, env=env)

            lab_s: list[float] = []
            skopeo_s: list[float] = []
            startup_s: list[float] = []
            for i in range(args.rounds):
                runs = [(lab, lab_s), (skopeo_copy, skopeo_s), (startup, startup_s)]
                for run, samples in runs if i % 2 == 0 else reversed(runs):
                    samples.append(timed(run))
    mib = total / (1 << 20)
    lab_m, skopeo_m = statistics.median(lab_s), statistics.median(skopeo_s)
    print(f"image of {len(sizes)} layers, {mib:.0f} MiB (built in {built:.1f} s), docker-registry on 127.0.0.1")
    print(f"median of {args.rounds} rounds, each into an empty directory:")
    print(f"  skopeo copy        {skopeo_m:6.2f} s  {mib / skopeo_m:6.0f} MiB/s   all: {_list(skopeo_s)}")
    print(f"  lab image fetch    {lab_m:6.2f} s  {mib / lab_m:6.0f} MiB/s   all: {_list(lab_s)}")
    start_m = statistics.median(startup_s)
    print(f"    of which start   {start_m:6.2f} s  (Python, click, requests)   all: {_list(startup_s)}")
    print(f"lab / skopeo {lab_m / skopeo_m:.2f}x   (without lab's start: {(lab_m - start_m) / skopeo_m:.2f}x)")
    return 0


def _list(samples: list[float]) -> str:
    return " ".join(f"{s:.2f}" for s in samples)


if __name__ == "__main__":
    sys.exit(main())
