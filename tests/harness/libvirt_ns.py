"""The libvirt stack inside a network namespace this process creates (docs/field-notes.md §6).

`LibvirtNamespace` adds `lablv<pid>`, starts virtlogd and libvirtd in it (no systemd here) with their own pid
files, makes sure the `default` storage pool exists, and on exit removes every domain, volume and network it
finds, stops the daemons and libvirt's dnsmasq by PID and deletes the namespace (which takes libvirt's
bridges and LIBVIRT_* iptables chains with it). Guests, their NAT and DHCP then never leave the namespace.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

LIBVIRT_SOCKET = Path("/run/libvirt/libvirt-sock")
POOL_DIR = Path("/var/lib/libvirt/images")
URI = "qemu:///system"


def _pid_from(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie has exited; only its parent's wait is missing


def _stop(pid: int | None, timeout: float = 10) -> None:
    if pid is None or not _alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)


class LibvirtNamespace:
    def __init__(self, name: str | None = None):
        self.name = name or f"lablv{os.getpid()}"
        self.run_dir = Path("/run") / f"coreos-lab-{self.name}"
        self.virtlogd_pid: int | None = None
        self.libvirtd_pid: int | None = None
        self._created_pool = False

    # -- running things inside -------------------------------------------------------------------------------
    def prefix(self) -> list[str]:
        """argv prefix that runs a command inside the namespace."""
        return ["ip", "netns", "exec", self.name]

    def run(self, *argv: str, check: bool = True, timeout: float = 120, **kw) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.prefix(), *argv], capture_output=True, text=True, check=check, timeout=timeout, **kw
        )

    def virsh(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("virsh", "-q", "-c", URI, *args, check=check)

    def names(self, *args: str) -> list[str]:
        return [n.strip() for n in self.virsh(*args).stdout.splitlines() if n.strip()]

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def start(self) -> LibvirtNamespace:
        if (
            LIBVIRT_SOCKET.exists()
            and subprocess.run(["virsh", "-c", URI, "version"], capture_output=True, check=False).returncode == 0
        ):
            raise RuntimeError(f"a libvirtd is already running ({LIBVIRT_SOCKET}); the tests need their own")
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        try:
            subprocess.run(["ip", "-n", self.name, "link", "set", "lo", "up"], check=True)
            self.run_dir.mkdir(parents=True, exist_ok=True)
            vlog, vd = self.run_dir / "virtlogd.pid", self.run_dir / "libvirtd.pid"
            self.run("virtlogd", "-d", "-p", str(vlog))
            self.virtlogd_pid = self._wait_pid(vlog)
            self.run("libvirtd", "-d", "-p", str(vd))
            self.libvirtd_pid = self._wait_pid(vd)
            deadline = time.monotonic() + 30
            while self.virsh("version", check=False).returncode != 0:
                if time.monotonic() > deadline:
                    raise RuntimeError("libvirtd did not answer within 30 s")
                time.sleep(0.2)
            if "default" not in self.names("pool-list", "--all", "--name"):
                POOL_DIR.mkdir(parents=True, exist_ok=True)
                self.virsh("pool-define-as", "default", "dir", "--target", str(POOL_DIR))
                self._created_pool = True
            if "default" not in self.names("pool-list", "--name"):
                self.virsh("pool-start", "default")
        except BaseException:
            self.stop()
            raise
        return self

    @staticmethod
    def _wait_pid(path: Path) -> int:
        deadline = time.monotonic() + 120  # about a hang, not speed
        while time.monotonic() < deadline:
            pid = _pid_from(path)
            if pid is not None:
                return pid
            time.sleep(0.05)
        raise RuntimeError(f"no pid file {path}")

    def leftovers(self) -> dict[str, list[str]]:
        """What a lab leaves behind: domains, domain volumes (not the cached base box images), extra networks."""
        vols = [v for v in self.names("vol-list", "default") if v]
        return {
            "domains": self.names("list", "--all", "--name"),
            "volumes": [v.split()[0] for v in vols if "_vagrant_box_image_" not in v.split()[0]],
            "networks": [n for n in self.names("net-list", "--all", "--name") if n != "default"],
        }

    @staticmethod
    def qemu_processes() -> list[int]:
        """PIDs of QEMU guests libvirt runs (its command lines start with `-name guest=`)."""
        pids = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv[0].endswith(b"qemu-system-x86_64") and b"-name" in argv:
                pids.append(int(proc.name))
        return pids

    def clean(self) -> None:
        """Remove every domain, volume and non-package network this daemon knows."""
        for dom in self.names("list", "--all", "--name"):
            self.virsh("destroy", dom, check=False)
            self.virsh("undefine", dom, "--nvram", "--remove-all-storage", check=False)
        for vol in self.names("vol-list", "default"):
            self.virsh("vol-delete", "--pool", "default", vol.split()[0], check=False)
        for net in self.names("net-list", "--all", "--name"):
            self.virsh("net-destroy", net, check=False)
            if net != "default":
                self.virsh("net-undefine", net, check=False)

    def stop(self) -> None:
        try:
            if self.libvirtd_pid is not None and _alive(self.libvirtd_pid):
                with contextlib.suppress(Exception):
                    self.clean()
                    if self._created_pool:
                        self.virsh("pool-destroy", "default", check=False)
                        self.virsh("pool-undefine", "default", check=False)
        finally:
            _stop(self.libvirtd_pid)
            _stop(self.virtlogd_pid)
            # libvirt's dnsmasq (one per network) outlives the daemon; its pid files name them.
            network_run = Path("/run/libvirt/network")
            for pidfile in network_run.glob("*.pid"):
                _stop(_pid_from(pidfile))
                pidfile.unlink(missing_ok=True)
            # Per-network runtime directories of the networks that lived in the namespace.
            for leftover in network_run.glob("*"):
                if leftover.is_dir():
                    shutil.rmtree(leftover, ignore_errors=True)
            subprocess.run(["ip", "netns", "del", self.name], check=False, capture_output=True)
            for f in self.run_dir.glob("*"):
                f.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                self.run_dir.rmdir()

    def __enter__(self) -> LibvirtNamespace:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
