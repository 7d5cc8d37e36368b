"""One writer at a time per lab: render, up, halt, destroy and smoke hold a lock on the lab directory while they
run.

Two `lab render`s of one lab would each mint a token and each write state and user-data; whichever wrote last
won one file and lost the other, so the token in `.lab/state.json` and the one in user-data could differ. A
second writer now waits for the first (saying whom it waits for, as apt does), up to `WAIT` seconds, then gives
up naming the holder (exit 5). The lock is a flock on the directory itself (field-notes §9): it writes nothing
and ends with its process. Within one process it is re-entrant: `lab up` renders, `lab smoke` runs up and
destroy. Readers (`lab config`, `status`, `health`) take no lock.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from coreos_lab.errors import Timeout
from coreos_lab.fsutil import LockHeld, held_lock

WAIT = 60.0  # a render takes a second; a second `lab up` need not wait out the first one's minutes

_held: set[Path] = set()  # labs this process holds


@contextmanager
def locked_lab(lab_dir: Path, command: str) -> Iterator[None]:
    """Hold the lab in `lab_dir` for `command` (e.g. "lab render") while the block runs."""
    key = Path(lab_dir).resolve()
    if key in _held:
        yield
        return

    def on_wait(holder: str) -> None:
        from coreos_lab import console

        console.info(f"waiting for {holder} to finish with {lab_dir} (up to {WAIT:.0f} s)")

    try:
        with held_lock(key, wait=WAIT, on_wait=on_wait):
            _held.add(key)
            try:
                yield
            finally:
                _held.discard(key)
    except LockHeld as exc:
        raise Timeout(
            f"{lab_dir} is busy: {exc.holder} still holds it after {WAIT:.0f} s",
            hint=f"wait for it to finish (or stop it), then run {command} again",
        ) from exc
