"""Benchmark: `lab mirror publish` against the plain copy of the same files, to a directory and to S3.

One run: a catalog of `--size-mib` (default 1 GiB, in 4 boxes) in a fresh mirror, then rounds in which the
contenders take turns, each writing to a fresh destination:

- directory: `lab mirror publish DIR` against `rsync -a ROOT/ DIR2/`. DIR is on the mirror's filesystem (the
  usual team server), so the boxes are hard links to the mirror's files; `lab mirror publish --copy` writes
  copies, as it does onto another filesystem, each flushed to disk before it is renamed into place, where plain
  rsync leaves the writing to the kernel: for reference `rsync -a --fsync`, and the disk's bound on that flush,
  each box copied from the page cache with `dd conv=fdatasync`;
- S3 (moto's standalone server on 127.0.0.1, started here): `lab mirror publish s3://…` against boto3's managed
  upload of every file of the mirror root (`aws s3 cp --recursive` in Python), both as a fresh process.

Prints the medians, the ratios (target ≤ 1.1× each), the median time of a republish with nothing changed (target
< 1 s, whole process) and the load average before and after (the machine may be shared).
Usage: python bench/publish.py [--size-mib 1024] [--rounds 3]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from as_installed import as_installed
from harness.s3 import S3Server, s3_server

from coreos_lab.mirror.store import BoxKey, MirrorStore

BOXES = 4
MANY_NAMES = ("flatcar-stable", "flatcar-beta", "coreos-stable")
MANY_VERSIONS = 30
CHUNK = 16 * 1024 * 1024
BASE_URL = "http://boxes.bench.test"
CPU = [0.0]  # CPU seconds of the commands timed

PLAIN_UPLOAD = """
import os, sys, boto3
root, bucket, prefix, endpoint = sys.argv[1:]
client = boto3.client("s3", endpoint_url=endpoint)
for directory, _, files in os.walk(root):
    for name in files:
        path = os.path.join(directory, name)
        client.upload_file(path, bucket, prefix + os.path.relpath(path, root))
"""


def make_mirror(root: Path, size: int) -> None:
    store = MirrorStore(root)
    for i in range(BOXES):
        key = BoxKey(f"bench-{i}", "1.0.0", "virtualbox")
        part = store.part_path(key)
        part.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with part.open("wb") as handle:
            left = size // BOXES
            while left > 0:
                piece = os.urandom(min(CHUNK, left))
                handle.write(piece)
                digest.update(piece)
                left -= len(piece)
        store.commit(key, part, sha256=digest.hexdigest(), source="bench")


def make_many(root: Path) -> None:
    """A catalog of many versions (tiny boxes): what a no-change republish costs when there is much to compare."""
    store = MirrorStore(root)
    for name in MANY_NAMES:
        for version in range(MANY_VERSIONS):
            key = BoxKey(name, f"{3000 + version}.0.0", "virtualbox")
            part = store.part_path(key)
            part.parent.mkdir(parents=True, exist_ok=True)
            part.write_bytes(key.relpath.encode())
            store.commit(key, part, sha256=hashlib.sha256(key.relpath.encode()).hexdigest(), source="bench")


def timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    """Wall time of a command; its CPU time (user + system) is added to `CPU[0]`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    run_env = {**os.environ, **(env or {})}
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=run_env)
    took = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU[0] += after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return took


def unchanged_republish(argv: list[str], env: dict[str, str] | None = None) -> str:
    """Median wall and CPU time of five republishes with nothing changed (after one that writes everything)."""
    timed(argv, env)
    walls, cpus = [], []
    for _ in range(5):
        CPU[0] = 0.0
        walls.append(timed(argv, env))
        cpus.append(CPU[0])
    return f"median {statistics.median(walls):.2f} s wall, {statistics.median(cpus):.2f} s CPU (target < 1 s)"


def publish_argv(root: Path, dest: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "coreos_lab",
        "mirror",
        "publish",
        dest,
        "--base-url",
        BASE_URL,
        "--root",
        str(root),
        *extra,
    ]


def empty_prefix(s3: S3Server, bucket: str, prefix: str) -> None:
    client = s3.client()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            client.delete_object(Bucket=bucket, Key=item["Key"])


def rounds(n: int, contenders: dict[str, Callable[[], float]]) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for i in range(n):
        order = list(contenders) if i % 2 == 0 else list(reversed(contenders))  # alternate who goes first
        for name in order:
            times[name].append(contenders[name]())
    return times


def report(title: str, times: dict[str, list[float]], reference: str, size: int) -> None:
    print(f"\n{title}")
    ours = statistics.median(times["lab mirror publish"])
    for name, values in times.items():
        median = statistics.median(values)
        runs = " ".join(f"{v:.2f}" for v in values)
        ratio = f"  {ours / median:.2f}× of this" if name != "lab mirror publish" else ""
        print(f"  {name:28} median {median:6.2f} s  {size / median / 1e6:7.1f} MB/s  (runs: {runs}){ratio}")
    print(f"  ratio to {reference}: {ours / statistics.median(times[reference]):.2f}× (target ≤ 1.1×)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    as_installed()
    size = args.size_mib * 1024 * 1024
    for tool in ("rsync",):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is missing: scripts/system-packages.sh lists it")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)")
    with tempfile.TemporaryDirectory(prefix="bench-publish-") as tmp:
        work = Path(tmp)
        root = work / "boxes"
        make_mirror(root, size)
        counter = iter(range(1_000_000))

        def fresh(name: str) -> Path:
            path = work / f"{name}-{next(counter)}"
            return path

        def publish_dir(*options: str) -> Callable[[], float]:
            def run() -> float:
                dest = fresh("site")
                took = timed(publish_argv(root, str(dest), *options))
                shutil.rmtree(dest)
                return took

            return run

        def rsync(*options: str) -> Callable[[], float]:
            def run() -> float:
                dest = fresh("rsync")
                took = timed(["rsync", "-a", *options, f"{root}/", f"{dest}/"])
                shutil.rmtree(dest)
                return took

            return run

        def disk() -> float:
            """The disk's bound on a durable publish: each box copied from the page cache and synced (dd)."""
            dest = fresh("dd")
            dest.mkdir()
            took = 0.0
            for box in sorted(root.rglob("*.box")):
                argv = ["dd", f"if={box}", f"of={dest / box.name}", "bs=4M", "conv=fdatasync", "status=none"]
                took += timed(argv)
            shutil.rmtree(dest)
            return took

        times = rounds(
            args.rounds,
            {
                "lab mirror publish": publish_dir(),
                "lab mirror publish --copy": publish_dir("--copy"),
                "rsync -a": rsync(),
                "rsync -a --fsync": rsync("--fsync"),
                "disk (dd conv=fdatasync)": disk,
            },
        )
        report(f"to a directory ({args.size_mib} MiB in {BOXES} boxes)", times, "rsync -a", size)
        bound = statistics.median(times["disk (dd conv=fdatasync)"])
        copies = statistics.median(times["lab mirror publish --copy"])
        rsync_a = statistics.median(times["rsync -a"])
        print(f"  copies (--copy, as onto another filesystem): {copies / rsync_a:.2f}× rsync -a, ", end="")
        print(f"{copies / bound:.2f}× the disk's bound (every box on disk before its metadata)")
        print(f"  republish with nothing changed: {unchanged_republish(publish_argv(root, str(work / 'site-kept')))}")
        many = work / "many"
        make_many(many)
        republish = unchanged_republish(publish_argv(many, str(work / "many-site")))
        print(f"  the same for {len(MANY_NAMES) * MANY_VERSIONS} small boxes ({', '.join(MANY_NAMES)}): {republish}")

        with s3_server(work) as s3:
            s3.bucket("bench")
            env = s3.env

            def publish_s3() -> float:
                prefix = f"pub-{next(counter)}/"
                took = timed([*publish_argv(root, f"s3://bench/{prefix}"), "--endpoint-url", s3.url], env)
                empty_prefix(s3, "bench", prefix)
                return took

            def plain_s3() -> float:
                prefix = f"plain-{next(counter)}/"
                took = timed([sys.executable, "-c", PLAIN_UPLOAD, str(root), "bench", prefix, s3.url], env)
                empty_prefix(s3, "bench", prefix)
                return took

            times = rounds(args.rounds, {"lab mirror publish": publish_s3, "boto3 upload_file (plain)": plain_s3})
            report("to S3 (moto server on 127.0.0.1)", times, "boto3 upload_file (plain)", size)
            argv = [*publish_argv(root, "s3://bench/kept/"), "--endpoint-url", s3.url]
            print(f"  republish with nothing changed: {unchanged_republish(argv, env)}")
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
