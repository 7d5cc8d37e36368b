"""`lab up` stops a `vagrant up` whose guest keeps refusing Vagrant's key: the stop itself (`proc.stream`'s
`stop_when`, against a real process that cleans up on SIGINT as Vagrant does) and the count of Vagrant's reports.
The whole path on real VMs is in tests/test_libvirt_flatcar_qemu.py."""

from __future__ import annotations

from coreos_lab import proc
from coreos_lab.vagrant.adapter import KEY_REFUSED, KEY_REFUSED_REPORTS, _KeyRefusals

# Prints three lines, then waits; on SIGINT says it cleaned up and exits 1 (Vagrant: "Waiting for cleanup…").
CLEANS_UP_ON_SIGINT = """
trap 'echo cleaned up; exit 1' INT
echo one; echo two; echo three
while :; do sleep 0.1; done
"""


def test_stream_interrupts_the_command_once_told_and_reads_its_cleanup() -> None:
    seen: list[str] = []
    result = proc.stream(["sh", "-c", CLEANS_UP_ON_SIGINT], seen.append, stop_when=lambda: "three" in seen, timeout=60)
    assert result.returncode == 1
    assert seen == ["one", "two", "three", "cleaned up"]


def test_the_third_refusal_of_a_machine_trips_and_every_line_is_passed_on() -> None:
    passed: list[tuple[str, str]] = []
    refusals = _KeyRefusals(lambda target, text: passed.append((target, text)))
    refusals("core-01", f"core-01: {KEY_REFUSED}")
    refusals("core-02", f"core-02: {KEY_REFUSED}")
    refusals("core-01", "core-01: Warning: Connection refused. Retrying...")
    for _ in range(KEY_REFUSED_REPORTS - 1):
        assert not refusals.tripped()
        refusals("core-01", f"core-01: {KEY_REFUSED}")
    assert refusals.tripped() and refusals.machine == "core-01"
    assert len(passed) == 3 + KEY_REFUSED_REPORTS - 1
