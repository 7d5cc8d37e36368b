"""`lab mirror publish`: the catalog as static files for a web server or an S3 bucket."""

from __future__ import annotations

from pathlib import Path

import click

from coreos_lab.cli.mirror import human_size
from coreos_lab.cli.options import json_option, resolve_root, root_option


@click.command("publish")
@click.argument("destination", metavar="DEST")
@click.option(
    "--base-url",
    required=True,
    help="The URL DEST will be served at (e.g. https://boxes.example.com/vagrant): every URL in the metadata is "
    "under it.",
)
@click.option("--delete", is_flag=True, help="Remove from DEST the boxes (and metadata) no longer in the catalog.")
@click.option(
    "--copy",
    is_flag=True,
    help="Write copies of the boxes into a directory DEST even on the mirror's filesystem, where they are hard links "
    "to the mirror's files by default.",
)
@click.option("--endpoint-url", help="S3 API endpoint for an s3:// DEST other than AWS (MinIO, Ceph RGW, R2, …).")
@root_option
@json_option
def publish(
    destination: str,
    base_url: str,
    delete: bool,
    copy: bool,
    endpoint_url: str | None,
    root: Path | None,
    as_json: bool,
) -> None:
    """Write the catalog to DEST (a directory, or s3://bucket/prefix) as static files: box metadata with URLs
    under --base-url, the boxes, and an index page. Only what changed since the last publish is written; the
    metadata goes last, so readers never see a URL to a box that is not there yet. In a directory on the mirror's
    own filesystem the boxes are hard links to the mirror's files (no copy, no extra space; --copy for copies)."""
    from coreos_lab import console
    from coreos_lab.errors import BadInput
    from coreos_lab.mirror.publish import Destination, DirectoryDestination
    from coreos_lab.mirror.publish import publish as publish_catalog
    from coreos_lab.mirror.s3 import S3Destination, S3Location, is_s3_url
    from coreos_lab.mirror.store import MirrorStore
    from coreos_lab.progress import TerminalReporter
    from coreos_lab.urls import is_http_url

    # Not mirror.http's checks: importing aiohttp would cost a no-change republish most of its time.
    if not is_http_url(base_url, base=True):
        raise BadInput(f"invalid --base-url {base_url!r}: give the absolute http(s) URL DEST will be served at")
    base = base_url.rstrip("/")
    if endpoint_url is not None and not is_http_url(endpoint_url, base=True):
        raise BadInput(
            f"invalid --endpoint-url {endpoint_url!r}: give the S3 API's http(s) URL, e.g. http://minio:9000"
        )
    mirror_root = resolve_root(root)
    target: Destination
    if is_s3_url(destination):
        if copy:
            raise BadInput(f"--copy is for a directory destination, not {destination!r}")
        target = S3Destination(S3Location.parse(destination), endpoint_url=endpoint_url)
    elif endpoint_url:
        raise BadInput(f"--endpoint-url is for an s3:// destination, not {destination!r}")
    else:
        target = DirectoryDestination.open(Path(destination), mirror_root, copy=copy)
    result = publish_catalog(MirrorStore(mirror_root), target, base, delete=delete, reporter=TerminalReporter())
    if as_json:
        console.print_json(result.as_dict())
        return
    linked = f", {len(result.linked)} of them linked to the mirror's files" if result.linked else ""
    console.success(
        f"published {mirror_root} to {result.destination}: {len(result.written)} files written "
        f"({human_size(result.bytes_written)}{linked}), {len(result.unchanged)} unchanged, "
        f"{len(result.removed)} removed"
    )
    if result.kept:
        console.info(f"{len(result.kept)} files no longer in the catalog were kept (--delete removes them)")
    for name in result.names:
        console.info(f"  vagrant box add {base}/{name}")
