"""The `lab` command: parse, dispatch, render. Core modules never see click.

Command modules import their core modules inside the command functions so `lab --help` stays fast.
"""

from __future__ import annotations

import logging
import os
import sys

import click

from coreos_lab import __version__
from coreos_lab.errors import ExitCode, LabError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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


def _register() -> None:
    from coreos_lab.cli import commands

    commands.register(cli)


def _env_flag(name: str) -> bool:
    """The variable read as click reads the option it feeds (LAB_DEBUG=0 is off, as for --debug's envvar)."""
    value = os.environ.get(name, "")
    try:
        return bool(value) and bool(click.BOOL.convert(value, None, None))
    except click.BadParameter:
        return False


def main(argv: list[str] | None = None) -> None:
    """Entry point with the single error boundary."""
    _register()
    debug = "--debug" in (argv if argv is not None else sys.argv[1:]) or _env_flag("LAB_DEBUG")
    try:
        # In non-standalone mode click returns a command's return value, or the code of `ctx.exit(code)`:
        # commands return an ExitCode when they finish with anything but 0.
        returned = cli.main(args=argv, prog_name="lab", standalone_mode=False)
    except click.exceptions.Abort:
        sys.stderr.write("interrupted\n")
        sys.exit(ExitCode.INTERRUPTED)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(ExitCode.USAGE)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(ExitCode.INTERRUPTED)
    except LabError as exc:
        if debug:
            import traceback

            traceback.print_exc()
        from coreos_lab import console

        console.error(exc.message, exc.hint)
        sys.exit(exc.exit_code)
    except Exception as exc:  # the boundary: anything else is a bug or an unexpected environment
        if debug:
            raise
        sys.stderr.write(f"error: unexpected {type(exc).__name__}: {exc}\n(run with --debug for a traceback)\n")
        sys.exit(ExitCode.ERROR)
    sys.exit(int(returned) if isinstance(returned, int) else ExitCode.OK)
