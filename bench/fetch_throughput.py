"""Benchmark: `lab mirror fetch` of a large box from nginx on 127.0.0.1, against its floor, in one run.

The box (random bytes, default 512 MiB) is laid out like a Flatcar release (version.txt, JSON with the sha256,
DIGESTS with the sha512) under an nginx started here. A fetch has to transfer the box and hash it twice, and
the two can overlap, so its floor is the slower of:
  curl           `curl -o box URL`: the plain transfer, no verification
  sha256+sha512  both digests of the box, each hashlib on its own thread reading the file (from the page cache)
Compared with it:
  lab            `lab mirror fetch` into an empty mirror: metadata, download hashed on the fly, both digests
                 checked, fsync and commit; includes starting Python and importing its libraries
Each round runs all three, alternating their order; printed are the medians, the ratio lab / floor (target
≤ 1.2) and the load average, since other work on the machine slows every side. For information: curl then
`sha512sum` (what a careful user does by hand: a second pass over the file), and lab's start alone.

The floor above leaves out two bounds of this machine that a verified, durable fetch cannot escape, measured in
the same rounds and printed with it:
  disk           `dd … conv=fdatasync` of the box from the page cache: writing it to disk and waiting for that
                 (lab syncs the box before it commits it; curl -o never waits for the disk)
  cores          the CPU seconds of curl and of the two hashes, spread over this machine's cores: the three
                 overlap only as far as there are cores for them
Where lab's time over the floor goes, measured in the same rounds: lab's own download code
(`coreos_lab.mirror.download`) alone, timed inside a Python of its own (not its start, the release's small files
or the commit):
  download, tmpfs  into a part on /dev/shm: lab's transfer and hashing alone, no disk
  download, disk   into a part beside the mirror, then fdatasync: the same made durable, as a fetch commits it
so that lab = start + durable download + a few small requests, and each part can be set against its bound.
Usage: python bench/fetch_throughput.py [--size-mib 512] [--rounds 5] [--baseline CHECKOUT]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from as_installed import as_installed
from harness.ports import free_port
from harness.waiting import wait_until

REPO = Path(__file__).resolve().parent.parent
VERSION = "9999.0.0"
STEM = "flatcar_production_vagrant"
READ = 4 << 20

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


def publish(www: Path, size: int, base: str) -> Path:
    """A Flatcar-like release of a random box under `www`; returns the box's file."""
    directory = www / "stable" / "amd64-usr" / VERSION
    directory.mkdir(parents=True)
    box = directory / f"{STEM}.box"
    sha256, sha512 = hashlib.sha256(), hashlib.sha512()
    with box.open("wb") as handle:
        for offset in range(0, size, READ):
            chunk = os.urandom(min(READ, size - offset))
            sha256.update(chunk)
            sha512.update(chunk)
            handle.write(chunk)
    url = f"{base}/stable/amd64-usr/{VERSION}/{box.name}"
    provider = {"name": "virtualbox", "url": url, "checksum_type": "sha256", "checksum": sha256.hexdigest()}
    doc = {"name": "flatcar-stable", "versions": [{"version": VERSION, "providers": [provider]}]}
    (directory / f"{STEM}.json").write_text(json.dumps(doc))
    (directory / f"{box.name}.DIGESTS").write_text(f"# SHA512 HASH\n{sha512.hexdigest()}  {box.name}\n")
    current = www / "stable" / "amd64-usr" / "current"
    current.mkdir()
    (current / "version.txt").write_text(f"FLATCAR_VERSION={VERSION}\n")
    return box


# lab's download alone, in a Python of its own (its start not counted): into the part named by argv[2], then on disk.
DOWNLOAD_ONLY = """
import os, sys, time
from coreos_lab.mirror.download import download
from coreos_lab.mirror.upstream import session
from coreos_lab.progress import SilentReporter
http = session()  # imports requests: part of lab's start
start = time.perf_counter()
with open(sys.argv[2], "w+b") as part:
    download(http, sys.argv[1], part, ["sha256", "sha512"], SilentReporter())
    os.fdatasync(part.fileno())
print(time.perf_counter() - start)
"""


def hash_in_two_threads(path: Path) -> None:
    """sha256 and sha512 of the file, each on its own thread with its own reads, as a fetch could at best."""

    def digest(name: str) -> None:
        h = hashlib.new(name)
        with path.open("rb") as handle:
            while chunk := handle.read(READ):
                h.update(chunk)

    threads = [threading.Thread(target=digest, args=(name,)) for name in ("sha256", "sha512")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def timed(run: Callable[[], None]) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system, this process's threads and its children) of `run`."""

    def cpu() -> float:
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime

    start, start_cpu = time.perf_counter(), cpu()
    run()
    return time.perf_counter() - start, cpu() - start_cpu


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--baseline", type=Path, help="another checkout (e.g. `git archive main` unpacked): its lab in the same rounds"
    )
    args = parser.parse_args()
    as_installed(*([REPO, args.baseline] if args.baseline else [REPO]))
    for tool in ("nginx", "curl", "sha512sum"):
        if shutil.which(tool) is None:
            print(f"{tool} not found (scripts/system-packages.sh lists it)", file=sys.stderr)
            return 4
    # The checkout's lab, not an installed one; no proxy between lab and nginx.
    env = dict(os.environ, PYTHONPATH=str(REPO), no_proxy="127.0.0.1", NO_PROXY="127.0.0.1")
    load_before = load()
    with tempfile.TemporaryDirectory(prefix="lab-bench-") as tmp:
        root = Path(tmp)
        root.chmod(0o755)  # nginx workers may run as an unprivileged user
        (root / "tmp").mkdir()
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        box = publish(root / "www", args.size_mib << 20, base)
        box_url = f"{base}/{box.relative_to(root / 'www')}"
        (root / "nginx.conf").write_text(NGINX_CONF.format(root=root, port=port))
        nginx = subprocess.Popen(["nginx", "-p", str(root), "-c", str(root / "nginx.conf")])
        try:
            wait_until(lambda: nginx.poll() is not None or listening(port), "nginx listening", timeout=30)
            if nginx.poll() is not None:
                print(f"nginx exited with {nginx.returncode}; see {root / 'error.log'}", file=sys.stderr)
                return 1
            out, mirror = root / "curl.box", root / "mirror"

            # Each run's files are deleted afterwards, before the next run: their dirty pages are then
            # dropped, not written back while the next one is measured.
            def curl() -> None:
                subprocess.run(["curl", "-sSf", "-o", str(out), box_url], check=True)

            def curl_then_sha512sum() -> None:
                curl()
                subprocess.run(["sha512sum", str(out)], check=True, stdout=subprocess.DEVNULL)

            def lab(checkout: Path = REPO) -> None:
                argv = [sys.executable, "-m", "coreos_lab", "mirror", "fetch", "--root", str(mirror)]
                run_env = dict(env, PYTHONPATH=str(checkout))
                # cwd: `python -m` puts the working directory before PYTHONPATH; it must not pick the checkout.
                subprocess.run(
                    [*argv, "--upstream", base], check=True, env=run_env, cwd=root, stderr=subprocess.DEVNULL
                )

            def lab_start() -> None:
                imports = "import coreos_lab.cli, coreos_lab.mirror.fetch, requests, rich.console"
                subprocess.run([sys.executable, "-c", imports], check=True, env=env, cwd=root)

            def lab_download(directory: Path) -> float:
                path = directory / f"lab-bench-{os.getpid()}.box.part"
                try:
                    argv = [sys.executable, "-c", DOWNLOAD_ONLY, box_url, str(path)]
                    done = subprocess.run(argv, check=True, env=env, cwd=root, capture_output=True, text=True)
                finally:
                    path.unlink(missing_ok=True)
                return float(done.stdout)

            def disk() -> None:
                argv = ["dd", f"if={box}", f"of={out}", "bs=4M", "conv=fdatasync", "status=none"]
                subprocess.run(argv, check=True)

            inner: list[float] = []  # the time a run measured itself, when it did
            runs: dict[str, Callable[[], None]] = {
                "curl": curl,
                "disk": disk,
                "hash": lambda: hash_in_two_threads(box),
                "lab": lab,
                "curl+sha512sum": curl_then_sha512sum,
                "lab start": lab_start,
                "download tmpfs": lambda: inner.append(lab_download(Path("/dev/shm"))),
                "download disk": lambda: inner.append(lab_download(root)),
            }
            if args.baseline:
                runs["lab baseline"] = lambda: lab(args.baseline.resolve())
            samples: dict[str, list[float]] = {name: [] for name in runs}
            cpu: dict[str, list[float]] = {name: [] for name in runs}
            for i in range(args.rounds):
                for name in runs if i % 2 == 0 else reversed(runs):
                    wall, used = timed(runs[name])
                    samples[name].append(inner.pop() if inner else wall)
                    cpu[name].append(used)
                    out.unlink(missing_ok=True)
                    shutil.rmtree(mirror, ignore_errors=True)
        finally:
            nginx.terminate()
            nginx.wait(timeout=10)
    floors = [max(c, h) for c, h in zip(samples["curl"], samples["hash"], strict=True)]
    ratios = [lab / floor for lab, floor in zip(samples["lab"], floors, strict=True)]
    mib = args.size_mib
    median = {name: statistics.median(values) for name, values in samples.items()}
    print(f"box {mib} MiB from nginx on 127.0.0.1, median of {args.rounds} alternated rounds")
    print(f"load average (1, 5, 15 min) before {load_before}, after {load()}, on {os.cpu_count()} cores")

    def line(name: str, seconds: float, values: list[float], what: str = "") -> None:
        print(f"  {name:16s} {seconds:6.2f} s  {mib / seconds:6.0f} MiB/s  all: {_list(values)}{what}")

    line("curl", median["curl"], samples["curl"])
    line("sha256+sha512", median["hash"], samples["hash"], "  (two hashlib threads)")
    line("floor", statistics.median(floors), floors, "  (per round: the slower of the two)")
    line("lab mirror fetch", median["lab"], samples["lab"], "  (verified, fsynced, committed)")
    print(f"lab / floor {statistics.median(ratios):.2f}x (target <= 1.2x)   per round: {_list(ratios)}")
    # With the cores busy, overlap has no idle core to use: the ratio then tends to the ratio of CPU seconds.
    cpu_s = {name: statistics.median(values) for name, values in cpu.items()}
    print(
        f"CPU seconds (user + system, without nginx's and the kernel's writeback): curl {cpu_s['curl']:.2f}, "
        f"hashes {cpu_s['hash']:.2f}, lab {cpu_s['lab']:.2f} (of which start {cpu_s['lab start']:.2f})"
    )
    cores = os.cpu_count() or 1
    cpu_bound = [(c + h) / cores for c, h in zip(cpu["curl"], cpu["hash"], strict=True)]
    bounds = [max(f, d, c) for f, d, c in zip(floors, samples["disk"], cpu_bound, strict=True)]
    bound_ratios = [lab / bound for lab, bound in zip(samples["lab"], bounds, strict=True)]
    print("the machine's bounds on a verified, durable fetch:")
    line("disk", median["disk"], samples["disk"], "  (dd conv=fdatasync from the page cache)")
    line("cores", statistics.median(cpu_bound), cpu_bound, f"  (curl's and the hashes' CPU over {cores} cores)")
    line("bound", statistics.median(bounds), bounds, "  (per round: the largest of floor, disk, cores)")
    print(f"lab / bound {statistics.median(bound_ratios):.2f}x   per round: {_list(bound_ratios)}")
    print("where lab's time goes (its download code alone, see the docstring):")
    tmpfs_ratios = [t / floor for t, floor in zip(samples["download tmpfs"], floors, strict=True)]
    line("download, tmpfs", median["download tmpfs"], samples["download tmpfs"])
    busy = [max(f, c) for f, c in zip(floors, cpu_bound, strict=True)]
    busy_ratios = [t / b for t, b in zip(samples["download tmpfs"], busy, strict=True)]
    print(f"    / floor {statistics.median(tmpfs_ratios):.2f}x   per round: {_list(tmpfs_ratios)}")
    print(
        f"    / the larger of floor and cores {statistics.median(busy_ratios):.2f}x   per round: {_list(busy_ratios)}"
    )
    line("download, disk", median["download disk"], samples["download disk"], "  (made durable: fdatasync)")
    rest = median["lab"] - median["download disk"]
    print(
        f"  lab - durable download {rest:.2f} s: its start ({median['lab start']:.2f} s), the release's small "
        "files, the commit"
    )
    print("for information:")
    if args.baseline:
        baseline = [lab / floor for lab, floor in zip(samples["lab baseline"], floors, strict=True)]
        line("lab baseline", median["lab baseline"], samples["lab baseline"], f"  ({args.baseline})")
        print(f"  baseline / floor {statistics.median(baseline):.2f}x   per round: {_list(baseline)}")
    line("curl + sha512sum", median["curl+sha512sum"], samples["curl+sha512sum"])
    print(f"  lab start        {median['lab start']:6.2f} s  (Python, click, requests, rich)")
    return 0


def _list(samples: list[float]) -> str:
    return " ".join(f"{s:.2f}" for s in samples)


if __name__ == "__main__":
    sys.exit(main())
