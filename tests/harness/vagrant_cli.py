"""The real Vagrant CLI with a VAGRANT_HOME of the test's own (no VirtualBox needed to add, list or check boxes)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path


def vagrant(home: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, VAGRANT_HOME=str(home), VAGRANT_CHECKPOINT_DISABLE="1", VAGRANT_NO_COLOR="1")
    return subprocess.run(
        [shutil.which("vagrant") or "vagrant", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def installed_boxes(home: Path) -> list[tuple[str, str]]:
    """(name, version) of every box under VAGRANT_HOME, read from its on-disk layout."""
    found = []
    for version_dir in sorted((home / "boxes").glob("*/*")):
        if version_dir.is_dir() and version_dir.name != "metadata_url":
            found.append((version_dir.parent.name.replace("-VAGRANTSLASH-", "/"), version_dir.name))
    return found
