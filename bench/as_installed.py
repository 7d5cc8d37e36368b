"""Run the checkout's lab as a user runs an installed one: with its bytecode compiled and kept.

`pip install` compiles every module; an environment with PYTHONDONTWRITEBYTECODE set would instead make each
`python -m coreos_lab` of a bench compile the package again (~0.1-0.2 s), a cost no user pays. Every bench that
times lab calls `as_installed()` first: the variable is dropped for the bench and its children, and the checkout
(or another one being compared) is compiled once.
"""

from __future__ import annotations

import compileall
import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def as_installed(*checkouts: Path) -> None:
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    for checkout in checkouts or (REPO,):
        compileall.compile_dir(str(checkout / "coreos_lab"), quiet=1)
