"""`lab mirror serve`: the HTTP box mirror (and discovery API) Vagrant talks to, and the image registry Docker
pulls from."""

from __future__ import annotations

from pathlib import Path

import click

from coreos_lab.cli.options import check_base_url, check_root, resolve_root, root_option
from coreos_lab.paths import DEFAULT_HOST, DEFAULT_PORT


@click.command("serve")
@root_option
@click.option("--host", default=DEFAULT_HOST, show_default=True, help="Address to listen on.")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=DEFAULT_PORT, show_default=True, help="0 picks a free port."
)
@click.option(
    "--base-url",
    default=None,
    help="Absolute base for the URLs written into box metadata (default: the scheme and Host of each request).",
)
@click.option(
    "--live/--no-live",
    default=None,
    help="Show downloads in progress (default: when stderr is a terminal).",
)
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Make the mirror private: every request for boxes, metadata and the index needs the token in this file "
    "(Authorization: Bearer TOKEN, or ?access_token=TOKEN), else 401. Discovery and /v2/ stay open: guests call "
    "them and cannot carry the token.",
)
def serve(
    root: Path | None, host: str, port: int, base_url: str | None, live: bool | None, token_file: Path | None
) -> None:
    """Serve the mirror until Ctrl-C: box metadata, boxes with Range, an index page at /, and the images as a
    read-only registry at /v2/ (`docker pull HOST:PORT/coreos/etcd:v3.5.16`).

    One access-log line per request goes to stderr.

    With --token-file, Vagrant sends the token when VAGRANT_SERVER_URL names this server's host and
    VAGRANT_CLOUD_TOKEN holds the token (vagrant box add), or from config.vm.box_download_options (vagrant up;
    what a lab's Vagrantfile does with lab.yaml's mirror.token_file).
    """
    from coreos_lab import console
    from coreos_lab.mirror.http import describe
    from coreos_lab.server import read_token_file, serve_forever

    mirror_root = check_root(resolve_root(root))
    base = check_base_url(base_url) if base_url else None
    token = read_token_file(token_file) if token_file else None
    live_view = console.stderr_is_terminal() if live is None else live

    def announce(url: str) -> None:
        console.info(describe(mirror_root, url, base))
        if token:
            console.info(f"  private: requests need the token in {token_file} (discovery and /v2/ stay open)")

    serve_forever(mirror_root, host=host, port=port, base_url=base, live_view=live_view, token=token, on_ready=announce)
    console.info("stopped")
