"""Where things live: package templates, the default mirror root, a lab's state directory."""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def templates_dir() -> Path:
    """The shipped templates: inside the wheel (`coreos_lab/_templates`), else the checkout's `templates/`."""
    packaged = _PACKAGE_DIR / "_templates"
    if packaged.is_dir():
        return packaged
    return _PACKAGE_DIR.parent / "templates"


def vagrantfile_template() -> Path:
    packaged = _PACKAGE_DIR / "_templates" / "Vagrantfile.j2"
    if packaged.is_file():
        return packaged
    return _PACKAGE_DIR.parent / "Vagrantfile.j2"


def expand_user(path: str) -> Path | None:
    """`path` with a leading `~` or `~user` expanded; None when that names no user with a home directory."""
    try:
        return Path(path).expanduser()
    except RuntimeError:  # pathlib's "Could not determine home directory."
        return None


def unknown_home(path: str) -> str:
    """Why `path` cannot be expanded (`expand_user` gave None), for an error naming it."""
    return f"{path!r}: {path.split('/', 1)[0]} names no user with a home directory"


def data_home() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "coreos-lab"


def cache_home() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "coreos-lab"


def default_mirror_root() -> Path:
    """Precedence: $LAB_MIRROR_ROOT, else `./boxes` when the current directory has one (a checkout of this
    project, or a user's lab folder), else the per-user data directory."""
    env = os.environ.get("LAB_MIRROR_ROOT")
    if env:
        expanded = expand_user(env)
        if expanded is None:
            from coreos_lab.errors import BadInput

            raise BadInput(f"environment LAB_MIRROR_ROOT: {unknown_home(env)}")
        return expanded
    local = Path.cwd() / "boxes"
    if local.is_dir():
        return local
    return data_home() / "boxes"


def discovery_dir(mirror_root: Path) -> Path:
    """Discovery state lives beside the boxes it is served with; dot-directories are never served."""
    return mirror_root / ".discovery"


DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080


def default_base_url() -> str:
    return os.environ.get("LAB_MIRROR_URL") or f"http://{DEFAULT_HOST}:{DEFAULT_PORT}"
