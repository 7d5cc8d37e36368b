"""The `lab` command: parse, dispatch, render. Core modules never see click.

Command modules are imported only for the command that runs (`commands.py`), and they import their core modules
inside the command functions, so start-up stays short.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
from typing import NoReturn

import click

from coreos_lab import __version__
from coreos_lab.cli.commands import COMMANDS, LazyGroup
from coreos_lab.errors import ExitCode, LabError


@click.group(
    cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}
)
@click.version_option(__version__, "--version", prog_name="lab")
@click.option("--debug", is_flag=True, envvar="LAB_DEBUG", help="Debug logging and tracebacks on errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Multi-node CoreOS / Flatcar cluster labs on Vagrant, offline.

    Box mirror, local etcd discovery, rendering, lifecycle, health and CI smoke tests in one tool.
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    if debug:
        os.environ["LAB_DEBUG"] = "1"
        logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(name)s: %(message)s")


def _env_flag(name: str) -> bool:
    """The variable read as click reads the option it feeds (LAB_DEBUG=0 is off, as for --debug's envvar)."""
    value = os.environ.get(name, "")
    try:
        return bool(value) and bool(click.BOOL.convert(value, None, None))
    except click.BadParameter:
        return False


def _wants_json(args: list[str]) -> bool:
    """`--json` among the options (before any `--`, after which words belong to a command run elsewhere)."""
    return "--json" in (args[: args.index("--")] if "--" in args else args)


def _fail(code: ExitCode, message: str, hint: str | None, as_json: bool) -> NoReturn:
    """Exit with `code`; under --json, a run that has not printed its document yet prints the error as one, so that
    stdout always holds exactly one JSON document."""
    from coreos_lab import console

    if as_json and not console.json_printed():
        console.print_json({"error": {"message": message, "hint": hint, "exit_code": int(code)}})
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """Entry point with the single error boundary."""
    from coreos_lab import console

    console.reset_json_printed()
    args = argv if argv is not None else sys.argv[1:]
    debug = "--debug" in args or _env_flag("LAB_DEBUG")
    as_json = _wants_json(args)
    try:
        # In non-standalone mode click returns a command's return value, or the code of `ctx.exit(code)`:
        # commands return an ExitCode when they finish with anything but 0.
        returned = cli.main(args=argv, prog_name="lab", standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):
        sys.stderr.write("interrupted\n")
        _fail(ExitCode.INTERRUPTED, "interrupted", None, as_json)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        _fail(ExitCode.USAGE, exc.format_message(), None, as_json)
    except LabError as exc:
        if debug:
            import traceback

            traceback.print_exc()
        console.error(exc.message, exc.hint)
        _fail(ExitCode(exc.exit_code), exc.message, exc.hint, as_json)
    except Exception as exc:  # the boundary: anything else is a bug or an unexpected environment
        if debug:
            raise
        message = f"unexpected {type(exc).__name__}: {exc}"
        sys.stderr.write(f"error: {message}\n(run with --debug for a traceback)\n")
        _fail(ExitCode.ERROR, message, "run with --debug for a traceback", as_json)
    sys.exit(int(returned) if isinstance(returned, int) else ExitCode.OK)


def run() -> None:
    """The console script and `python -m coreos_lab`: `main`, then an exit that skips a needless walk.

    The interpreter's last garbage collections walk every object still alive, the imported libraries' above all:
    ~70 ms of every command's exit on a small machine (a third of a small image fetch's own start-up). Frozen
    (`gc.freeze`), they are freed with the process instead. Exit handlers still run and files still close
    (reference counting frees them; only cycles are left to the process's end). Not in `main`: tests call it
    in-process, where frozen objects would pile up.
    """
    try:
        main()
    finally:
        gc.freeze()
