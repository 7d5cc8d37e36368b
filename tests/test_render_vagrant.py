"""Rendered labs against the real Vagrant CLI (VAGRANT_HOME in a temporary directory)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from harness.labs import mirror_with_boxes, write_lab

from coreos_lab.lab.config import load_config
from coreos_lab.lab.render import render_lab

pytestmark = [pytest.mark.integration, pytest.mark.vagrant]

VERSIONS = {"coreos": "1068.8.0", "flatcar": "3815.2.0"}


def vagrant(lab_dir: Path, home: Path, *args: str, path_prefix: Path | None = None) -> subprocess.CompletedProcess[str]:
    vagrant_bin = shutil.which("vagrant")
    assert vagrant_bin is not None, "vagrant is not installed (scripts/system-packages.sh installs it)"
    env = dict(
        os.environ, VAGRANT_HOME=str(home), VAGRANT_CHECKPOINT_DISABLE="1", VAGRANT_DEFAULT_PROVIDER="virtualbox"
    )
    if path_prefix is not None:
        env["PATH"] = f"{path_prefix}{os.pathsep}{env['PATH']}"
    return subprocess.run(
        [vagrant_bin, *args], cwd=lab_dir, env=env, capture_output=True, text=True, timeout=180, check=False
    )


def machine_readable(stdout: str) -> list[list[str]]:
    """`timestamp,target,type,data…` lines, Vagrant's escapes undone."""
    return [
        [field.replace("%!(VAGRANT_COMMA)", ",").replace("\\n", "\n") for field in line.split(",")]
        for line in stdout.splitlines()
        if line.strip()
    ]


@pytest.fixture
def mirror(mirror_root: Path) -> Path:
    mirror_with_boxes(mirror_root)
    return mirror_root


@pytest.mark.parametrize("nodes", [1, 3, 5])
@pytest.mark.parametrize("distro", ["coreos", "flatcar"])
def test_vagrant_validates_rendered_lab(tmp_path: Path, mirror: Path, distro: str, nodes: int) -> None:
    # The largest lab also carries the optional Vagrant settings — all but NFS shares, for which Vagrant's
    # validate demands an nfsd on the host (NFSNotSupported).
    extras = (
        {
            "etcd": {"members": 3},
            "serial_logging": True,
            "expose_docker_tcp": 2375,
            "forwarded_ports": [
                {"guest": 80, "host": 8080},
                {"guest": 53, "host": 5353, "protocol": "udp", "node": "core-02"},
            ],
        }
        if nodes == 5
        else {}
    )
    lab_dir = write_lab(tmp_path / "lab", mirror, distro=distro, version=VERSIONS[distro], nodes=nodes, **extras)
    render_lab(load_config(lab_dir, environ={}))
    run = vagrant(lab_dir, tmp_path / "vagrant.d", "validate", "--ignore-provider", "--machine-readable")
    assert run.returncode == 0, run.stdout + run.stderr
    lines = machine_readable(run.stdout)
    assert ["Vagrantfile validated successfully."] in [line[4:] for line in lines if line[2:4] == ["ui", "info"]]
    names = [f"core-{i:02d}" for i in range(1, nodes + 1)]
    assert [line[1] for line in lines if line[2:4] == ["metadata", "provider"]] == names


def test_vagrant_status_lists_exactly_the_machines(tmp_path: Path, mirror: Path) -> None:
    """`vagrant status --machine-readable` with the VirtualBox provider the Vagrantfile configures.

    VirtualBox cannot run here, and Vagrant refuses a provider that is not usable (ProviderNotUsable) before it
    lists any machine. So a stand-in `VBoxManage` answers the one question Vagrant's VirtualBox provider asks
    before listing machines that do not exist yet, `--version`, and fails (recording it) on anything else. The
    rest is real Vagrant reading the real Vagrantfile: every provider block is evaluated (no --ignore-provider),
    serial logging and forwarded ports included. (Shared folders are left out: a full validate then demands a
    running nfsd on this host.)
    """
    lab_dir = write_lab(
        tmp_path / "lab",
        mirror,
        nodes=4,
        name_prefix="lab",
        serial_logging=True,
        forwarded_ports=[{"guest": 80, "host": 8080}],
        expose_docker_tcp=2375,
    )
    render_lab(load_config(lab_dir, environ={}))
    stand_in = tmp_path / "bin"
    stand_in.mkdir()
    calls = tmp_path / "vboxmanage-calls"
    (stand_in / "VBoxManage").write_text(
        f'#!/bin/sh\necho "$*" >> "{calls}"\nif [ "$1" = "--version" ]; then echo 7.0.14r161095; exit 0; fi\nexit 1\n'
    )
    (stand_in / "VBoxManage").chmod(0o755)

    run = vagrant(lab_dir, tmp_path / "vagrant.d", "status", "--machine-readable", path_prefix=stand_in)
    assert run.returncode == 0, run.stdout + run.stderr
    lines = machine_readable(run.stdout)
    states = [(line[1], line[3]) for line in lines if line[2] == "state"]
    assert states == [(f"lab-{i:02d}", "not_created") for i in range(1, 5)]
    assert {line[3] for line in lines if line[2] == "provider-name"} == {"virtualbox"}
    assert set(calls.read_text().splitlines()) == {"--version"}
    validate = vagrant(lab_dir, tmp_path / "vagrant.d", "validate", path_prefix=stand_in)
    assert validate.returncode == 0, validate.stdout + validate.stderr


def test_vagrant_rejects_unrendered_user_data(tmp_path: Path, mirror: Path) -> None:
    """The Vagrantfile provisions each machine's own user-data: Vagrant itself notices one missing."""
    lab_dir = write_lab(tmp_path / "lab", mirror, nodes=2)
    render_lab(load_config(lab_dir, environ={}))
    (lab_dir / "user-data" / "core-02.yaml").unlink()
    run = vagrant(lab_dir, tmp_path / "vagrant.d", "validate", "--ignore-provider")
    assert run.returncode != 0
    assert "core-02.yaml" in run.stdout + run.stderr


@pytest.mark.parametrize("distro", ["coreos", "flatcar"])
def test_pinned_box_resolves_through_the_mirror(tmp_path: Path, mirror: Path, distro: str) -> None:
    """The Vagrantfile's box name, version and box_url are what the mirror server answers: real Vagrant adds
    exactly that box from it (a name that differed from the metadata's would fail with BoxAddNameMismatch)."""
    import re

    from coreos_lab.server import EmbeddedServer

    with EmbeddedServer(mirror, port=0) as server:
        lab_dir = write_lab(
            tmp_path / "lab", mirror, distro=distro, version=VERSIONS[distro], nodes=1, mirror={"url": server.url}
        )
        render_lab(load_config(lab_dir, environ={}))
        text = (lab_dir / "Vagrantfile").read_text()
        pins = dict(re.findall(r'^(BOX_NAME|BOX_VERSION|BOX_URL) = "([^"]*)"$', text, re.MULTILINE))
        assert pins["BOX_URL"] == f"{server.url}/{distro}-stable"
        home = tmp_path / "vagrant.d"
        run = vagrant(
            lab_dir,
            home,
            "box",
            "add",
            pins["BOX_URL"],
            "--box-version",
            pins["BOX_VERSION"],
            "--provider",
            "virtualbox",
        )
        assert run.returncode == 0, run.stdout + run.stderr
    listed = vagrant(lab_dir, home, "box", "list", "--machine-readable")
    boxes = [line[3:] for line in machine_readable(listed.stdout) if line[2] in ("box-name", "box-version")]
    assert boxes == [[pins["BOX_NAME"]], [pins["BOX_VERSION"]]]
