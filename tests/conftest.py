"""Fixtures every test module may use. Area-specific fixtures live in tests/harness/."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def mirror_root(tmp_path: Path) -> Path:
    root = tmp_path / "boxes"
    root.mkdir()
    return root
