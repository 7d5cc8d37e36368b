"""Reading a rendered lab's user-data back: the etcd environment each machine's etcd gets, the way the guest
applies it (tests apply it to real etcd members)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import yaml

from coreos_lab.errors import BadInput
from coreos_lab.lab.render import etcd_env_name
from coreos_lab.lab.state import LabState

_ENV_LINE = re.compile(r"^\s*Environment\s*=\s*(.*)$")


def etcd_environment(user_data: str) -> dict[str, str]:
    """The ETCD_* environment a rendered user-data gives etcd, the way the guest applies it.

    CoreOS: coreos-cloudinit turns each `coreos.etcd2` key into `ETCD_<KEY>` (hyphens → underscores) in a
    drop-in for etcd2.service. Flatcar: the `Environment=` lines of etcd-member.service's drop-ins.
    """
    doc = yaml.safe_load(user_data) or {}
    coreos = doc.get("coreos") or {}
    env: dict[str, str] = {}
    for key, value in (coreos.get("etcd2") or {}).items():
        env[etcd_env_name(str(key))] = value if isinstance(value, str) else json.dumps(value)
    for unit in coreos.get("units") or []:
        if unit.get("name") not in ("etcd-member.service", "etcd2.service"):
            continue
        for drop_in in unit.get("drop-ins") or []:
            for line in str(drop_in.get("content", "")).splitlines():
                match = _ENV_LINE.match(line)
                if not match:
                    continue
                for assignment in shlex.split(match.group(1)):
                    name, _, value = assignment.partition("=")
                    if name.startswith("ETCD_"):
                        env[name] = value
    return env


def etcd_environments(lab_dir: Path) -> dict[str, dict[str, str]]:
    """Per machine (by name, in order), the etcd environment its rendered user-data implies."""
    state = LabState.load(lab_dir)
    if not state.nodes:
        raise BadInput(f"{lab_dir} has not been rendered yet", hint=f"run `lab render {lab_dir}`")
    return {
        node["name"]: etcd_environment((Path(lab_dir) / node["user_data"]).read_text(encoding="utf-8"))
        for node in state.nodes
    }
