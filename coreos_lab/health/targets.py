"""Where the nodes of a health run come from: a lab directory (via Vagrant) or an OpenSSH config file."""

from __future__ import annotations

from pathlib import Path

from coreos_lab.errors import BadInput
from coreos_lab.ssh import SSHTarget, parse_ssh_config


def vagrant_ssh_config(lab_dir: Path) -> str:
    """`vagrant ssh-config` of every machine of the lab (the lifecycle adapter may take this over)."""
    from coreos_lab import proc

    proc.which("vagrant", hint="install Vagrant, or pass --ssh-config FILE --distro D")
    return proc.run(["vagrant", "ssh-config"], cwd=lab_dir, timeout=120).stdout


def lab_distro(lab_dir: Path) -> str:
    """The `distro` of the lab's lab.yaml (default coreos, as coreos-vagrant's)."""
    import yaml

    path = lab_dir / "lab.yaml"
    if not path.is_file():
        raise BadInput(f"{path}: no lab.yaml here", hint="pass a lab directory, or --ssh-config FILE --distro D")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise BadInput(f"{path}: not valid YAML: {exc}") from exc
    distro = data.get("distro", "coreos") if isinstance(data, dict) else "coreos"
    return str(distro)


def targets_from_file(path: Path) -> list[SSHTarget]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise BadInput(f"{path}: cannot read ssh-config: {exc.strerror}") from exc
    return parse_ssh_config(text, source=str(path))


def targets_from_lab(lab_dir: Path) -> list[SSHTarget]:
    return parse_ssh_config(vagrant_ssh_config(lab_dir), source=f"vagrant ssh-config in {lab_dir}")
