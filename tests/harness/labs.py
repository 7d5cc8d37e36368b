"""Lab directories for tests: a mirror with tiny boxes and a lab.yaml written from a mapping."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from coreos_lab.mirror.store import MirrorStore
from harness.boxes import add_box

# The boxes `mirror_with_boxes` stores: name → versions.
BOXES = {"coreos-stable": ["1010.5.0", "1068.8.0"], "flatcar-stable": ["3815.2.0"], "flatcar-lts": ["3033.3.18"]}


def mirror_with_boxes(root: Path) -> MirrorStore:
    store = MirrorStore(root)
    for name, versions in BOXES.items():
        for version in versions:
            add_box(store, name, version)
    return store


def write_lab(lab_dir: Path, mirror_root: Path, **settings: Any) -> Path:
    """lab.yaml with `settings` (nested mappings allowed) and the mirror root; returns the lab directory."""
    doc: dict[str, Any] = {"version": "1068.8.0", **settings}
    doc.setdefault("mirror", {})
    doc["mirror"] = {"root": str(mirror_root), **doc["mirror"]}
    lab_dir.mkdir(parents=True, exist_ok=True)
    (lab_dir / "lab.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return lab_dir
