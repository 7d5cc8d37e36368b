"""Box mirror routes: Vagrant metadata, box files with Range, index page. Placeholder until the serve issue."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiohttp import web


def setup(app: web.Application, mirror_root: Path, *, base_url: str | None = None, live_view: bool = False) -> None:
    """Add the mirror routes to `app`."""
