"""Loading a lab's configuration: lab.yaml ← environment `LAB_*` ← command-line flags over the defaults of the
settings table (`settings`), checked (`validate`) into the typed `LabConfig` (`model`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from coreos_lab.distros import DISTROS
from coreos_lab.errors import BadInput
from coreos_lab.lab import validate
from coreos_lab.lab.model import LabConfig
from coreos_lab.lab.settings import CONFIG_FILE, SETTINGS, STRUCTURED, fill_dependent_defaults


def read_lab_yaml(lab_dir: Path) -> dict[str, Any] | None:
    """lab.yaml as a mapping; None when the lab directory has none."""
    import yaml

    from coreos_lab.lab import bounded_yaml

    path = lab_dir / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        with path.open("rb") as handle:
            data = handle.read(bounded_yaml.MAX_BYTES + 1)  # never more than the bound into memory
        doc = bounded_yaml.load(data)
    except bounded_yaml.TooLarge as exc:
        raise BadInput(f"{path}: refused{_where(exc)}: {exc.problem}", hint="a lab.yaml needs far less") from exc
    except yaml.YAMLError as exc:
        raise BadInput(f"{path}: not valid YAML{_where(exc)}: {getattr(exc, 'problem', exc)}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"{path}: cannot read: {exc}") from exc
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise BadInput(f"{path}: expected a mapping of settings at the top level, found {type(doc).__name__}")
    return doc


def _where(exc: Exception) -> str:
    mark = getattr(exc, "problem_mark", None)
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


def load_config(
    lab_dir: Path,
    *,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    check_mirror: bool = True,
) -> LabConfig:
    """The effective configuration of the lab in `lab_dir`.

    `flags` maps dotted setting paths to command-line values (None = not given). With `check_mirror`, the
    pinned version must be in the mirror store (a box for the configured provider).
    """
    lab_dir = Path(lab_dir)
    doc = read_lab_yaml(lab_dir)
    origin = str(lab_dir / CONFIG_FILE)
    if doc is None:
        raise BadInput(f"no {CONFIG_FILE} in {lab_dir}", hint=f"run `lab init {lab_dir}` first")
    return build_config(lab_dir, doc, origin=origin, flags=flags, environ=environ, check_mirror=check_mirror)


def build_config(
    lab_dir: Path,
    doc: Mapping[str, Any],
    *,
    origin: str,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    check_mirror: bool = True,
) -> LabConfig:
    environ = os.environ if environ is None else environ
    problems = validate.Problems(origin)
    file_values = validate.flatten(doc, problems)

    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    before_types = problems.count
    for setting in SETTINGS:
        value, source = setting.default, "default"
        if setting.path in file_values:
            value, source = file_values[setting.path], CONFIG_FILE
            value = validate.check_type(setting, value, f"{CONFIG_FILE}: {setting.path}", problems)
        if environ.get(setting.env, "").strip():  # an empty variable counts as unset
            env_where = f"environment {setting.env}"
            value, source = validate.parse_env(setting, environ[setting.env], env_where, problems), f"env {setting.env}"
        if flags and flags.get(setting.path) is not None:
            value, source = flags[setting.path], f"flag {setting.flag}"
        values[setting.path], sources[setting.path] = value, source
    for path in STRUCTURED:
        if path in file_values:
            sources[path] = CONFIG_FILE
    if problems.count > before_types:
        problems.raise_if_any()  # wrong types make the checks below meaningless

    def where(path: str) -> str:
        source = sources[path]
        return f"{CONFIG_FILE}: {path}" if source == CONFIG_FILE else f"{path} (from {source})"

    validate.check_scalars(values, where, problems, require_version=check_mirror)
    fill_dependent_defaults(lab_dir, values, sources)
    nodes = validate.build_nodes(values, file_values, where, problems)
    ports = validate.build_ports(file_values.get("forwarded_ports"), nodes, problems)
    folders = validate.build_folders(file_values.get("shared_folders"), lab_dir, problems)
    units = validate.build_units(file_values.get("units"), nodes, problems)
    fleet_metadata = validate.build_metadata(file_values.get("fleet.metadata"), "fleet.metadata", problems)
    validate.check_fleet_metadata(values, file_values, problems)
    problems.raise_if_any()
    nodes = tuple(validate.with_fleet_metadata(n, fleet_metadata) for n in nodes)

    config = LabConfig(
        lab_dir=lab_dir,
        values=values,
        sources=sources,
        nodes=nodes,
        forwarded_ports=ports,
        shared_folders=folders,
        units=units,
        fleet_metadata=fleet_metadata,
        structured={p: file_values[p] for p in STRUCTURED if p in file_values},
    )
    if check_mirror:
        check_version_in_mirror(config, where("version"))
    return config


def check_version_in_mirror(config: LabConfig, where: str) -> None:
    from coreos_lab.mirror.store import BoxKey, MirrorStore

    store = MirrorStore(config.mirror_root)
    key = BoxKey(config.box_name, config.version, config.provider)
    if store.get(key) is not None:
        return
    have = [e.version for e in store.entries(config.box_name) if e.key.provider == config.provider]
    found = f"it has {', '.join(have)}" if have else f"it has no {config.box_name} box for {config.provider}"
    raise BadInput(
        f"{where}: {config.version!r} is not in the mirror at {store.root}: {found}",
        hint=fetch_hint(config.distro, config.channel, config.version),
    )


def fetch_hint(distro: str, channel: str, version: str | None = None) -> str:
    pinned = f" --version {version}" if version else ""
    return (
        f"put the box in the mirror first: `lab mirror fetch --distro {distro} --channel {channel}{pinned}`"
        " (or `lab mirror import BOX`)"
    )


def newest_version(mirror_root: Path, distro: str, channel: str, provider: str) -> str | None:
    """The newest version of `<distro>-<channel>` the mirror has for `provider`, if any."""
    from coreos_lab.mirror.store import MirrorStore

    entry = MirrorStore(mirror_root).latest(DISTROS[distro].box_name(channel), provider)
    return entry.version if entry is not None else None
