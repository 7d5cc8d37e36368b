"""`lab up` reads lab.yaml once and probes the mirror once: the plan made from the loaded configuration is handed
down to render and health, and preflight's probe decides whether `up` serves the mirror itself.

`lab up` runs in-process against the stand-in `vagrant` (tests/harness/standin_vagrant.py); the loader and the
HTTP client are wrapped to count their calls, and still do their work. The probe is counted where it leaves the
process (a GET of the mirror's URL), however the code reaches it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from harness.lifecycle_labs import install_standins, make_lab

from coreos_lab.cli import main
from coreos_lab.lab import config

pytestmark = pytest.mark.integration

NODES = ["core-01", "core-02", "core-03"]


def counting(monkeypatch: pytest.MonkeyPatch, module: object, name: str) -> list[tuple[Any, ...]]:
    """Wrap `module.name` so that every call is recorded, then made as before."""
    calls: list[tuple[Any, ...]] = []
    original: Callable[..., Any] = getattr(module, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return calls


def test_up_reads_lab_yaml_once_and_probes_the_mirror_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    lab_dir, env = make_lab(tmp_path)
    env.update(install_standins(tmp_path, NODES))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    mirror_url = yaml.safe_load((lab_dir / "lab.yaml").read_text())["mirror"]["url"]
    reads = counting(monkeypatch, config, "read_lab_yaml")
    gets = counting(monkeypatch, requests, "get")

    with pytest.raises(SystemExit) as exited:
        main(["up", str(lab_dir), "--no-wait", "--json"])

    assert exited.value.code == 0, capsys.readouterr().err
    doc = json.loads(capsys.readouterr().out)
    assert doc["started"] == NODES and doc["server"] == "embedded"
    assert doc["render"]["written"]  # the files were rendered from the configuration read once
    assert len(reads) == 1, f"lab.yaml read {len(reads)} times"
    probes = [url for url, *_ in gets if str(url).startswith(mirror_url + "/")]
    assert len(probes) == 1, f"mirror probed {len(probes)} times: {probes}"
