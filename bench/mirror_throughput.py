"""Benchmark: `lab mirror serve` against nginx, 8 clients downloading a 1 GiB box at once.

One run: a box in a fresh mirror (read once into the page cache: serving is measured, not the disk), served on
127.0.0.1 by `lab mirror serve` and by nginx (its own config, sendfile on, started and stopped here). Each round
downloads it with `--clients` concurrent curl clients from each server in turn (the order alternating between
rounds, so neither always goes first), and records

- the aggregate rate (bytes of all clients / wall time from the first start to the last end), and
- the server's CPU time (user + system, /proc/<pid>/stat) per GiB sent: lab's one process (all its threads),
  nginx's workers.

Prints the medians over `--rounds` rounds side by side and the ratios lab / nginx, with the load average
(other load on the machine slows both alike, but only within one run).

Targets (mirror serve): rate ≥ 1.0× nginx's, server CPU per GiB ≤ 1.2× nginx's.
Usage: python bench/mirror_throughput.py [--size-mib 1024] [--clients 8] [--rounds 5]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from as_installed import as_installed
from harness.ports import free_port

from coreos_lab.mirror.store import BoxKey, MirrorStore

KEY = BoxKey("bench-stable", "1.0.0", "virtualbox")
CHUNK = 16 * 1024 * 1024
LAB, NGINX = "lab mirror serve", "nginx"
RATE_TARGET, CPU_TARGET = 1.0, 1.2

NGINX_CONF = """\
daemon off;
worker_processes auto;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log;
events {{ worker_connections 256; }}
http {{
    sendfile on;
    tcp_nopush on;
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/tmp;
    proxy_temp_path {prefix}/tmp;
    fastcgi_temp_path {prefix}/tmp;
    uwsgi_temp_path {prefix}/tmp;
    scgi_temp_path {prefix}/tmp;
    types {{ application/octet-stream box; }}
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
"""


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {proc.args!r}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port}: {proc.args!r}")


def make_mirror(root: Path, size: int) -> Path:
    store = MirrorStore(root)
    part = store.part_path(KEY)
    part.parent.mkdir(parents=True)
    digest = hashlib.sha256()
    with part.open("wb") as handle:
        block = os.urandom(CHUNK)
        for offset in range(0, size, CHUNK):
            piece = block[: min(CHUNK, size - offset)]
            handle.write(piece)
            digest.update(piece)
    store.commit(KEY, part, sha256=digest.hexdigest(), source="bench")
    for path in [root, *root.rglob("*")]:  # nginx workers run as an unprivileged user
        path.chmod(0o755 if path.is_dir() else 0o644)
    return store.artifact_path(KEY)


def download(url: str, clients: int, expected: int) -> float:
    """Aggregate MB/s of `clients` concurrent curl downloads of `url` (wall time from first start to last end)."""
    argv = ["curl", "-s", "-o", "/dev/null", "-w", "%{size_download}", url]
    start = time.perf_counter()
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE) for _ in range(clients)]
    outputs = [proc.communicate()[0] for proc in procs]
    elapsed = time.perf_counter() - start
    for proc, out in zip(procs, outputs, strict=True):
        if proc.returncode != 0 or int(out or 0) != expected:
            raise RuntimeError(f"curl {url}: exit {proc.returncode}, {out!r} bytes of {expected}")
    return clients * expected / elapsed / 1e6


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process, all its threads (/proc/<pid>/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """The child processes of `pid` (nginx's workers of its master)."""
    return [
        int(child) for task in Path(f"/proc/{pid}/task").iterdir() for child in (task / "children").read_text().split()
    ]


def server_cpu_seconds(pids: list[int]) -> float:
    return sum(process_cpu_seconds(pid) for pid in pids)


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, sig)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    as_installed()  # the server's CPU per GiB must not include compiling the package
    for tool in ("nginx", "curl"):
        if shutil.which(tool) is None:
            print(f"{tool} not found: install it (apt-get install --no-install-recommends {tool})", file=sys.stderr)
            return 4
    size = args.size_mib * 1024 * 1024
    work = Path(tempfile.mkdtemp(prefix="lab-bench-"))
    work.chmod(0o755)
    procs: list[tuple[subprocess.Popen[bytes], int]] = []
    rates: dict[str, list[float]] = {LAB: [], NGINX: []}
    cpu: dict[str, list[float]] = {LAB: [], NGINX: []}
    load_before = load_average()
    try:
        root = work / "boxes"
        box = make_mirror(root, size)
        url_path = "/" + KEY.relpath
        with box.open("rb") as handle:  # into the page cache: measure serving, not the disk
            while handle.read(CHUNK):
                pass

        prefix = work / "nginx"
        (prefix / "tmp").mkdir(parents=True)
        ports = {LAB: free_port(), NGINX: free_port()}
        conf = prefix / "nginx.conf"
        conf.write_text(NGINX_CONF.format(prefix=prefix, port=ports[NGINX], root=root))
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "stdin": subprocess.DEVNULL}
        lab_argv = [sys.executable, "-m", "coreos_lab", "mirror", "serve", "--root", str(root)]
        commands = {
            LAB: [*lab_argv, "--port", str(ports[LAB]), "--no-live"],
            NGINX: ["nginx", "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")],
        }
        for name, argv in commands.items():
            proc = subprocess.Popen(argv, **quiet)  # type: ignore[call-overload]
            procs.append((proc, signal.SIGQUIT if name == "nginx" else signal.SIGTERM))
            wait_listening(ports[name], proc)
        lab_proc, nginx_proc = procs[0][0], procs[1][0]
        while not children(nginx_proc.pid):  # the master listens before it has forked its workers
            time.sleep(0.1)
        server_pids = {LAB: [lab_proc.pid], NGINX: children(nginx_proc.pid)}

        gib = args.clients * size / 2**30
        for round_number in range(args.rounds):
            order = [LAB, NGINX] if round_number % 2 == 0 else [NGINX, LAB]
            for name in order:
                before = server_cpu_seconds(server_pids[name])
                rates[name].append(download(f"http://127.0.0.1:{ports[name]}{url_path}", args.clients, size))
                cpu[name].append((server_cpu_seconds(server_pids[name]) - before) / gib)
    finally:
        for proc, sig in procs:
            stop(proc, sig)
        shutil.rmtree(work, ignore_errors=True)

    print(f"{args.clients} clients x {args.size_mib} MiB, {args.rounds} rounds alternated, medians")
    print(f"load average before {load_before}, after {load_average()}")
    for name in (NGINX, LAB):
        print(
            f"{name:17s} {statistics.median(rates[name]):6.0f} MB/s  server CPU {statistics.median(cpu[name]):5.3f} s/GiB"
            f"  (rates {' '.join(f'{r:.0f}' for r in rates[name])}; CPU {' '.join(f'{c:.3f}' for c in cpu[name])})"
        )
    rate_ratio = statistics.median(rates[LAB]) / statistics.median(rates[NGINX])
    cpu_ratio = statistics.median(cpu[LAB]) / statistics.median(cpu[NGINX])
    rate_ok, cpu_ok = rate_ratio >= RATE_TARGET, cpu_ratio <= CPU_TARGET
    print(f"rate        lab / nginx = {rate_ratio:4.2f}x (target >= {RATE_TARGET}x) {'ok' if rate_ok else 'MISS'}")
    print(f"CPU per GiB lab / nginx = {cpu_ratio:4.2f}x (target <= {CPU_TARGET}x) {'ok' if cpu_ok else 'MISS'}")
    print("PASS" if rate_ok and cpu_ok else "MISS")
    return 0 if rate_ok and cpu_ok else 1


if __name__ == "__main__":
    sys.exit(main())
