"""The CLI's frame: version, help, exit codes, the error boundary."""

from __future__ import annotations

from harness.cli import lab

from coreos_lab import __version__
from coreos_lab.errors import ExitCode


def test_version() -> None:
    run = lab("--version")
    assert run.returncode == 0
    assert __version__ in run.stdout


def test_help_lists_command_groups() -> None:
    run = lab("--help")
    assert run.returncode == 0
    assert "mirror" in run.stdout


def test_unknown_command_is_usage_error() -> None:
    run = lab("no-such-command")
    assert run.returncode == ExitCode.USAGE
    assert "no-such-command" in run.stderr


def test_help_does_not_import_heavy_modules() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from coreos_lab.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('paramiko', 'aiohttp', 'requests', 'rich', 'jinja2', 'yaml', 'vagrant') if m in sys.modules]\n"
        "print('HEAVY=' + ','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "HEAVY="


def test_exit_codes_are_the_documented_ones() -> None:
    assert [int(c) for c in ExitCode] == [0, 1, 2, 3, 4, 5, 130]
