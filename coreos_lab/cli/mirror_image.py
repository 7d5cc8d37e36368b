"""`lab mirror image …`: container images in the mirror (fetched from a registry, or imported from a file)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from coreos_lab.cli.mirror import human_size
from coreos_lab.cli.options import json_option, resolve_root, root_option
from coreos_lab.distros import DISTRO_NAMES
from coreos_lab.errors import BadInput

if TYPE_CHECKING:
    from coreos_lab.mirror.images.auth import Credentials
    from coreos_lab.mirror.images.store import Tally


@click.group("image")
def image() -> None:
    """Container images in the mirror (an OCI image layout under <root>/images), e.g. Flatcar's etcd."""


@image.command("fetch")
@click.argument("reference", required=False)
@click.option(
    "--distro",
    type=click.Choice(DISTRO_NAMES),
    default="flatcar",
    show_default=True,
    help="Without REFERENCE: fetch the etcd image this distro runs.",
)
@click.option(
    "--platform",
    "platforms",
    multiple=True,
    metavar="OS/ARCH[/VARIANT]",
    help="The platform to take from a multi-platform image (repeatable; default linux/amd64).",
)
@click.option("--all-platforms", is_flag=True, help="Take every platform of a multi-platform image.")
@click.option("--username", help="Registry user name (default: from ~/.docker/config.json, else anonymous).")
@click.option("--password", help="Registry password (prefer --password-stdin).")
@click.option("--password-stdin", is_flag=True, help="Read the registry password from stdin.")
@click.option(
    "--insecure",
    is_flag=True,
    help="Allow plain HTTP and unchecked TLS certificates for this registry (a loopback one may always be plain HTTP).",
)
@click.option("--jobs", type=click.IntRange(1, 16), default=4, show_default=True, help="Blobs downloaded at once.")
@click.option(
    "--force", is_flag=True, help="Replace an image stored under the same repository:tag with another digest."
)
@root_option
@json_option
def fetch(
    reference: str | None,
    distro: str,
    platforms: tuple[str, ...],
    all_platforms: bool,
    username: str | None,
    password: str | None,
    password_stdin: bool,
    insecure: bool,
    jobs: int,
    force: bool,
    root: Path | None,
    as_json: bool,
) -> None:
    """Pull REFERENCE (e.g. quay.io/coreos/etcd:v3.5.16) from its registry into the mirror, verified; resumes an
    interrupted fetch. It is kept under its repository and tag without the registry host (coreos/etcd:v3.5.16)."""
    from coreos_lab import console
    from coreos_lab.mirror.images.fetch import fetch_image
    from coreos_lab.mirror.images.store import ImageStore
    from coreos_lab.progress import TerminalReporter

    if platforms and all_platforms:
        raise BadInput("--platform and --all-platforms exclude each other")
    result = fetch_image(
        ImageStore(resolve_root(root)),
        reference or default_reference(distro),
        platforms=platforms,
        all_platforms=all_platforms,
        credentials=_credentials(username, password, password_stdin),
        insecure=insecure,
        force=force,
        jobs=jobs,
        reporter=TerminalReporter(),
    )
    stored = result.image
    held = "" if stored.platforms == "all" else f", platforms {stored.platforms}"
    if as_json:
        console.print_json(result.as_dict())
    elif result.action == "unchanged":
        console.info(f"{stored.name} is already in the mirror ({stored.digest}{held}); nothing to do")
    else:
        fetched = f"{', '.join(result.platforms)}; " if result.platforms else ""
        resumed = f", {human_size(result.resumed_bytes)} of it resumed" if result.resumed_bytes else ""
        console.success(
            f"{result.action} {stored.name} from {result.source} ({fetched}"
            f"{_blobs(result.downloaded)} downloaded{resumed}, {_blobs(result.reused)} already in the mirror)"
        )


@image.command("import")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--name", help="repository:tag to store the image under (default: the names in the archive).")
@click.option(
    "--force", is_flag=True, help="Replace an image stored under the same repository:tag with another digest."
)
@root_option
@json_option
def import_(file: Path, name: str | None, force: bool, root: Path | None, as_json: bool) -> None:
    """Add the images of a `docker save` archive or an OCI image layout tarball, every blob verified."""
    from coreos_lab import console
    from coreos_lab.mirror.images.importer import import_archive
    from coreos_lab.mirror.images.store import ImageStore
    from coreos_lab.progress import TerminalReporter

    result = import_archive(ImageStore(resolve_root(root)), file, name=name, force=force, reporter=TerminalReporter())
    if as_json:
        console.print_json(result.as_dict())
        return
    for imported in result.images:
        stored = imported.image
        if imported.action == "unchanged":
            console.info(f"{stored.name} is already in the mirror ({stored.digest}); nothing to do")
        else:
            console.success(f"{imported.action} {stored.name} from {file} ({stored.digest}, {result.format})")
    console.info(f"{_blobs(result.copied)} copied, {_blobs(result.reused)} already in the mirror")


def default_reference(distro: str) -> str:
    """The etcd image of a distro, from the distro table."""
    from coreos_lab.distros import DISTROS

    reference = DISTROS[distro].etcd_image
    if reference is None:
        raise BadInput(
            f"{distro} runs no etcd image (its etcd runs on the host)",
            hint="name the image: lab mirror image fetch REFERENCE",
        )
    return reference


def _credentials(username: str | None, password: str | None, password_stdin: bool) -> Credentials | None:
    from coreos_lab.mirror.images.auth import Credentials

    if password is not None and password_stdin:
        raise BadInput("--password and --password-stdin exclude each other")
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    if username is None:
        if password is not None:
            raise BadInput("a password needs --username")
        return None
    if password is None:
        raise BadInput("--username needs --password or --password-stdin")
    return Credentials(username, password, "--username/--password")


def _blobs(tally: Tally) -> str:
    return f"{tally.blobs} blob{'' if tally.blobs == 1 else 's'} ({human_size(tally.bytes)})"
