"""A PATH without some programs, so that a test needing their absence holds on a machine that has them."""

from __future__ import annotations

import os
from pathlib import Path

# What Vagrant and `lab doctor` look for on PATH to find VirtualBox.
VIRTUALBOX_TOOLS = ("VBoxManage", "vboxmanage")


def path_without(bin_dir: Path, *tools: str) -> str:
    """A PATH of one new directory, `bin_dir`, linking every program the current PATH offers (the first of
    each name, as a shell would find it) except `tools`."""
    bin_dir.mkdir(parents=True)
    seen = set(tools)
    for directory in os.environ["PATH"].split(os.pathsep):
        try:
            entries = sorted(os.scandir(directory or "."), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            if entry.name in seen or entry.is_dir() or not os.access(entry.path, os.X_OK):
                continue
            seen.add(entry.name)
            (bin_dir / entry.name).symlink_to(os.path.abspath(entry.path))
    return str(bin_dir)
