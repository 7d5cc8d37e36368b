"""Fixtures every test module may use. Area-specific fixtures live in tests/harness/."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from harness.libvirt_ns import LibvirtNamespace
    from harness.netns import NetnsCluster


def pytest_sessionstart(session: pytest.Session) -> None:
    """Ctrl-C must reach the `lab` processes the tests interrupt. A suite started as a background job of a
    non-interactive shell (`cmd &`, nohup) inherits SIGINT ignored, every child with it, and Python then installs
    no KeyboardInterrupt handler: restore the default here, so that each child starts as from a terminal."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def mirror_root(tmp_path: Path) -> Path:
    root = tmp_path / "boxes"
    root.mkdir()
    return root


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A HOME of our own for `lab` runs over SSH: proves nothing is written to the user's known_hosts."""
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NetnsCluster]:
    """Three nodes in network namespaces with sshd up, etcd not started (tests/harness/netns.py)."""
    from harness.netns import netns_cluster

    with netns_cluster(tmp_path / "nodes", 3) as c:
        yield c


@pytest.fixture(scope="session")
def libvirt_ns() -> Iterator[LibvirtNamespace]:
    """One network namespace with virtlogd + libvirtd per session (tests/harness/libvirt_ns.py)."""
    from harness.libvirt_ns import LibvirtNamespace

    with LibvirtNamespace() as ns:
        ns.clean()  # leftovers of an earlier run that was killed
        yield ns


@pytest.fixture(scope="session")
def tiny_box() -> Path:
    """The tiny CoreOS-like libvirt box, built once and cached by its inputs (tests/harness/libvirt_box.py)."""
    from harness.libvirt_box import build_box

    return build_box()
