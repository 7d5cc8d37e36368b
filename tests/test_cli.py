"""The CLI's frame: version, help, exit codes, the error boundary."""

from __future__ import annotations

from pathlib import Path

import pytest
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


def test_the_entry_point_exits_with_mains_code_and_leaves_the_objects_to_the_process() -> None:
    """`run` (the console script, `python -m coreos_lab`) keeps main's exit code and output, and freezes the
    objects before the interpreter's last collections; exit handlers still run after it."""
    import subprocess
    import sys

    code = (
        "import atexit, gc, sys\n"
        "atexit.register(lambda: sys.stderr.write(f'FROZEN={gc.get_freeze_count() > 0}\\n'))\n"
        "from coreos_lab.cli import run\n"
        "sys.argv = ['lab', 'mirror', 'list', '--root', sys.argv[1]]\n"
        "run()\n"
    )
    done = subprocess.run([sys.executable, "-c", code, "/nonexistent/lab-mirror"], capture_output=True, text=True)
    plain = subprocess.run(
        [sys.executable, "-m", "coreos_lab", "mirror", "list", "--root", "/nonexistent/lab-mirror"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == plain.returncode != 0
    assert done.stderr.splitlines()[-1] == "FROZEN=True"
    assert done.stderr.splitlines()[:-1] == plain.stderr.splitlines()


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


TRACEBACK = "Traceback (most recent call last):"


def test_debug_and_lab_debug_add_the_traceback_to_an_error(tmp_path: Path) -> None:
    """A refused command (a missing mirror root: exit 2) says one line and a hint; `--debug` or LAB_DEBUG put the
    traceback above them. LAB_DEBUG=0 is off, as for the option it feeds."""
    missing = tmp_path / "no-such-mirror"
    error = f"error: mirror root {missing} does not exist"
    for run in (
        lab("mirror", "list", "--root", missing, env={"LAB_DEBUG": ""}),
        lab("mirror", "list", "--root", missing, env={"LAB_DEBUG": "0"}),
    ):
        assert run.returncode == ExitCode.USAGE
        assert run.stderr.startswith(error) and TRACEBACK not in run.stderr
    for run in (
        lab("--debug", "mirror", "list", "--root", missing, env={"LAB_DEBUG": ""}),
        lab("mirror", "list", "--root", missing, env={"LAB_DEBUG": "1"}),
    ):
        assert run.returncode == ExitCode.USAGE
        assert run.stderr.startswith(TRACEBACK), run.stderr
        assert f"coreos_lab.errors.BadInput: mirror root {missing} does not exist" in run.stderr
        assert f"\n{error}\n" in run.stderr  # the usual message still ends it


@pytest.mark.integration
@pytest.mark.vagrant
def test_debug_logs_the_commands_lab_runs(tmp_path: Path) -> None:
    """Debug logging: `lab doctor` asks Vagrant its version, which --debug shows on stderr."""
    env = {"LAB_DEBUG": "", "VAGRANT_HOME": str(tmp_path / "vagrant.d")}
    plain = lab("doctor", tmp_path, env=env)
    debug = lab("--debug", "doctor", tmp_path, env=env)
    assert plain.returncode == debug.returncode != ExitCode.USAGE
    assert "DEBUG coreos_lab.proc: run: [" in debug.stderr and "'--version']" in debug.stderr
    assert "DEBUG" not in plain.stderr


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["status", "{tmp}/no-lab", "--json"], ExitCode.USAGE),  # a LabError (no lab.yaml)
        (["health", "--ssh-config", "{tmp}/missing", "--json"], ExitCode.USAGE),  # a click usage error
        (["health", "--check", "disk", "--json"], ExitCode.USAGE),  # a bad value before --json is even parsed
    ],
)
def test_json_commands_print_one_json_document_even_on_error(tmp_path: Path, args: list[str], code: int) -> None:
    """The README's promise: with --json, stdout holds exactly one JSON document whatever the outcome; the error
    also goes to stderr as usual."""
    import json

    run = lab(*(a.format(tmp=tmp_path) for a in args))
    assert run.returncode == code
    error = json.loads(run.stdout)["error"]
    assert error["exit_code"] == code and error["message"]
    assert "error" in run.stderr.lower()


def test_without_json_an_error_leaves_stdout_empty(tmp_path: Path) -> None:
    run = lab("status", tmp_path / "no-lab")
    assert run.returncode == ExitCode.USAGE and run.stdout == ""


def test_a_second_run_in_one_process_still_prints_its_json_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from coreos_lab.cli import main

    for _ in range(2):
        with pytest.raises(SystemExit) as exit:
            main(["status", str(tmp_path / "no-lab"), "--json"])
        assert exit.value.code == ExitCode.USAGE
        assert json.loads(capsys.readouterr().out)["error"]["message"]
