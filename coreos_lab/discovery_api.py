"""etcd v2 discovery protocol routes (DESIGN §6). Placeholder until the discovery issue lands."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiohttp import web


def setup(app: web.Application, state_dir: Path) -> None:
    """Add the discovery routes (`/new`, `/<token>/...`) to `app`."""
