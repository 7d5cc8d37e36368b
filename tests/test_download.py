"""Resumable downloads against misbehaving servers, and the progress bar on a terminal."""

from __future__ import annotations

import hashlib
import os
import pty
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.boxes import make_box
from harness.upstream import FixtureServer, ReleaseUpstream

from coreos_lab.mirror.download import download
from coreos_lab.mirror.upstream import session

pytestmark = pytest.mark.integration


class Notes:
    def __init__(self) -> None:
        self.notes: list[str] = []

    def note(self, message: str) -> None:
        self.notes.append(message)

    def transfer(self, description: str, total: int | None, completed: int = 0):  # type: ignore[no-untyped-def]
        from coreos_lab.progress import SilentReporter

        return SilentReporter().transfer(description, total, completed)


@pytest.fixture
def server() -> Iterator[FixtureServer]:
    srv = FixtureServer()
    try:
        yield srv
    finally:
        srv.close()


def test_a_206_from_the_wrong_offset_starts_over(server: FixtureServer, tmp_path: Path) -> None:
    data = make_box(padding=5000)
    server.files["/a.box"] = data
    server.misplace_ranges = True
    part = tmp_path / "a.box.part"
    part.write_bytes(data[:100])
    notes = Notes()
    with part.open("r+b") as handle:
        got = download(session(), f"{server.url}/a.box", handle, ["sha256"], notes)
    assert part.read_bytes() == data
    assert got.digests["sha256"] == hashlib.sha256(data).hexdigest()
    assert got.resumed_from == 0
    assert any("Content-Range 'bytes 0-" in n and "downloading from the start" in n for n in notes.notes)
    ranges = [r.headers.get("Range") for r in server.requests]
    assert ranges == ["bytes=100-", None]


def test_a_part_longer_than_the_file_starts_over(server: FixtureServer, tmp_path: Path) -> None:
    data = make_box()
    server.files["/a.box"] = data
    part = tmp_path / "a.box.part"
    part.write_bytes(data + b"trailing garbage")
    with part.open("r+b") as handle:
        got = download(session(), f"{server.url}/a.box", handle, ["sha256"], Notes())
    assert part.read_bytes() == data and got.resumed_from == 0


def test_the_progress_bar_shows_rate_and_eta_on_a_terminal(mirror_root: Path) -> None:
    up = ReleaseUpstream()
    try:
        release = up.publish("flatcar", "stable", "3815.2.0")
        up.bincache.throttle = (64, 0.1)
        primary, secondary = pty.openpty()
        argv = [sys.executable, "-m", "coreos_lab", "mirror", "fetch", "--root", str(mirror_root), "--upstream", up.url]
        env = dict(os.environ, COLUMNS="120", TERM="xterm")
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=secondary, env=env)
        os.close(secondary)
        output = b""
        try:
            while True:
                try:
                    chunk = os.read(primary, 65536)
                except OSError:  # the terminal closed with the process
                    break
                if not chunk:
                    break
                output += chunk
        finally:
            proc.wait(timeout=60)
            os.close(primary)
        assert proc.returncode == 0, output
        text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", output.decode(errors="replace"))  # without colours
        assert "flatcar_production_vagrant.box" in text
        assert re.search(r"\d+ bytes/s", text)  # transfer rate
        assert re.search(rf"\d+/{len(release.box)} bytes .*\d:\d\d:\d\d", text)  # progress and ETA
        assert "added flatcar-stable 3815.2.0" in text
        assert release.sha256 in text
    finally:
        up.close()
