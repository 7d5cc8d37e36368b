"""`lab init`: a commented lab.yaml from defaults ← environment ← flags, its box version pinned to the mirror."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from coreos_lab.errors import BadInput, LabError
from coreos_lab.fsutil import atomic_write_text
from coreos_lab.lab.config import build_config, fetch_hint, newest_version
from coreos_lab.lab.model import LabConfig
from coreos_lab.lab.settings import CONFIG_FILE


@dataclass(frozen=True)
class InitResult:
    path: Path
    config: LabConfig
    kept_copy: Path | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "kept_copy": str(self.kept_copy) if self.kept_copy else None,
            "config": self.config.as_dict(),
        }


def init_lab(
    lab_dir: Path,
    *,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    force: bool = False,
) -> InitResult:
    """Write a commented lab.yaml for `lab_dir` from defaults ← environment ← flags.

    The version is pinned to the flag's (which the mirror must have) or to the newest the mirror has. With an
    empty mirror nothing is written: a lab that cannot render is no use, and a guessed version would only fail
    later (the error names the fetch command to run first).
    """
    lab_dir = Path(lab_dir)
    path = lab_dir / CONFIG_FILE
    if path.exists() and not force:
        raise BadInput(
            f"{path} exists; not overwriting it", hint="edit it, or `lab init --force` (keeps your copy beside it)"
        )
    if lab_dir.exists() and not lab_dir.is_dir():
        raise BadInput(f"{lab_dir} is not a directory")
    flags = dict(flags or {})
    origin = "the command line / environment"
    draft = build_config(lab_dir, {}, origin=origin, flags=flags, environ=environ, check_mirror=False)
    if draft.sources["version"] == "default":
        newest = newest_version(draft.mirror_root, draft.distro, draft.channel, draft.provider)
        if newest is None:
            raise BadInput(
                f"the mirror at {draft.mirror_root} has no {draft.box_name} box for {draft.provider}: nothing to pin",
                hint=fetch_hint(draft.distro, draft.channel),
            )
        flags["version"] = newest
    config = build_config(lab_dir, {}, origin=origin, flags=flags, environ=environ, check_mirror=True)

    from coreos_lab.lab.render import environment

    text = (
        environment(lab_dir).get_template("lab.yaml.j2").render(v=dict(config.values), v_sources=dict(config.sources))
    )
    # What is written must read back as what was asked for.
    import yaml

    written = build_config(lab_dir, yaml.safe_load(text), origin=str(path), environ=environ, check_mirror=False)
    if dict(written.values) != dict(config.values):
        raise LabError("the lab.yaml template does not read back as the settings it was given (a bug)")

    lab_dir.mkdir(parents=True, exist_ok=True)
    kept = None
    if path.exists():
        kept = path.with_name(f"{CONFIG_FILE}.orig-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}")
        shutil.copy2(path, kept)
    atomic_write_text(path, text)
    return InitResult(path, config, kept)
