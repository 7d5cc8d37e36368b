"""`lab` run inside the libvirt namespace of the VM tests (tests/harness/libvirt_ns.py), with a Vagrant home, a
mirror and a cache of its own."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from harness.cli import LabRun, lab
from harness.libvirt_ns import LibvirtNamespace


class Lab:
    """`lab …` run inside the namespace, with a Vagrant home of its own."""

    def __init__(self, ns: LibvirtNamespace, tmp: Path):
        self.ns = ns
        self.dir = tmp / "lab"
        self.mirror = tmp / "boxes"
        self.env = {
            "VAGRANT_HOME": str(tmp / "vagrant.d"),
            "LAB_MIRROR_ROOT": str(self.mirror),
            "XDG_CACHE_HOME": str(tmp / "cache"),
        }

    def __call__(self, *args: str | os.PathLike[str], timeout: float = 900) -> LabRun:
        return lab(*args, env=self.env, timeout=timeout, prefix=self.ns.prefix())

    def ok(self, *args: str | os.PathLike[str], timeout: float = 900) -> LabRun:
        run = self(*args, timeout=timeout)
        assert run.returncode == 0, f"lab {' '.join(map(str, args))} exited {run.returncode}\n{run.stderr[-4000:]}"
        return run

    def state(self) -> dict:
        return json.loads((self.dir / ".lab" / "state.json").read_text())

    def members(self) -> list[tuple[str, str]]:
        """(id, name) of every etcd member, as `etcdctl member list` on core-02 reports them."""
        out = self.ok("ssh", self.dir, "core-02", "--", "etcdctl", "member", "list").stdout
        rows = [re.split(r",\s*", line) for line in out.splitlines() if line.strip()]
        return sorted((row[0], row[2]) for row in rows)
