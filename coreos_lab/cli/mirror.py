"""`lab mirror …`: the box mirror."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from coreos_lab.cli.commands import MIRROR_COMMANDS, LazyGroup
from coreos_lab.cli.options import json_option, resolve_existing_root, resolve_root, root_option
from coreos_lab.distros import DISTRO_NAMES
from coreos_lab.errors import ExitCode

if TYPE_CHECKING:
    from coreos_lab.mirror.fetch import FetchResult
    from coreos_lab.mirror.images.store import ImageStore, StoredImage
    from coreos_lab.mirror.importer import ImportResult

base_url_option = click.option(
    "--base-url",
    default=None,
    help="Base URL the metadata and box URLs are shown under (default: $LAB_MIRROR_URL, else the serve address).",
)


@click.group(cls=LazyGroup, lazy=MIRROR_COMMANDS)
def mirror() -> None:
    """Keep boxes and container images in a local mirror and serve them to Vagrant and Docker."""


@mirror.command("import")
@click.argument("box", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--metadata", type=click.Path(path_type=Path, dir_okay=False), help="Vagrant box metadata JSON.")
@click.option("--name", help="Box name, e.g. flatcar-stable (from --metadata when given).")
@click.option("--version", "version", help="Box version, e.g. 3815.2.0 (picks one when --metadata has several).")
@click.option("--provider", help="Provider (default: from --metadata, else the box's metadata.json).")
@click.option("--architecture", help="Architecture (default: from --metadata or the box, else amd64).")
@click.option("--force", is_flag=True, help="Replace a different box stored under the same name/version/provider.")
@root_option
@base_url_option
@json_option
def import_(
    box: Path,
    metadata: Path | None,
    name: str | None,
    version: str | None,
    provider: str | None,
    architecture: str | None,
    force: bool,
    root: Path | None,
    base_url: str | None,
    as_json: bool,
) -> None:
    """Add a box downloaded some other way (checked against --metadata's checksum when given)."""
    from coreos_lab.mirror.importer import import_box
    from coreos_lab.mirror.store import MirrorStore
    from coreos_lab.progress import TerminalReporter

    result = import_box(
        MirrorStore(resolve_root(root)),
        box,
        metadata=metadata,
        name=name,
        version=version,
        provider=provider,
        architecture=architecture,
        force=force,
        reporter=TerminalReporter(),
    )
    _report_stored(result, base_url, as_json)


@mirror.command("fetch")
@click.option(
    "--metadata-url",
    help="Any box's Vagrant metadata JSON (e.g. Vagrant Cloud's for bento/debian-12): mirror it under its name "
    "instead of a CoreOS/Flatcar release (--distro, --channel, --upstream and --keyring do not apply).",
)
@click.option("--distro", type=click.Choice(DISTRO_NAMES), default="flatcar", show_default=True)
@click.option("--channel", default="stable", show_default=True, help="alpha, beta, stable (and lts for Flatcar).")
@click.option(
    "--version",
    "version",
    help="A release version, or current (the default). With --metadata-url: a version of the box (default: newest).",
)
@click.option("--all-versions", is_flag=True, help="With --metadata-url: every version the metadata lists.")
@click.option("--provider", help="Provider (default: virtualbox; with --metadata-url: any, if only one matches).")
@click.option(
    "--architecture",
    help="With --metadata-url: e.g. amd64, arm64 (default: the provider's default_architecture, else the only one).",
)
@click.option(
    "--upstream",
    envvar="LAB_UPSTREAM",
    help="Release server base URL; '{channel}' in it is replaced, else /<channel> is appended "
    "(default: https://{channel}.release.<distro's domain>). Env: LAB_UPSTREAM.",
)
@click.option(
    "--keyring",
    type=click.Path(path_type=Path, dir_okay=False),
    help="OpenPGP public key file: verify the .DIGESTS.asc and .sig signatures with gpg.",
)
@click.option("--force", is_flag=True, help="Replace a different box stored under the same name/version/provider.")
@root_option
@base_url_option
@json_option
def fetch(
    metadata_url: str | None,
    distro: str,
    channel: str,
    version: str | None,
    all_versions: bool,
    provider: str | None,
    architecture: str | None,
    upstream: str | None,
    keyring: Path | None,
    force: bool,
    root: Path | None,
    base_url: str | None,
    as_json: bool,
) -> None:
    """Download a CoreOS/Flatcar Vagrant box from a release server, or any box from its metadata JSON (--metadata-url),
    verified, resuming an interrupted one."""
    from coreos_lab import console
    from coreos_lab.errors import BadInput
    from coreos_lab.mirror.store import MirrorStore
    from coreos_lab.progress import TerminalReporter

    if metadata_url is not None:
        from coreos_lab.mirror.any_box import fetch_any_box

        if keyring is not None or upstream is not None:
            raise BadInput("--keyring and --upstream are for CoreOS/Flatcar releases, not with --metadata-url")
        results = fetch_any_box(
            MirrorStore(resolve_root(root)),
            metadata_url,
            version=version,
            all_versions=all_versions,
            provider=provider,
            architecture=architecture,
            force=force,
            reporter=TerminalReporter(),
        )
        if as_json:
            console.print_json({"boxes": [r.as_dict(_base(base_url)) for r in results]})
        for result in [] if as_json else results:
            _report_stored(result, base_url, False, origin=f" from {result.box_url}")
        return
    if all_versions or architecture is not None:
        raise BadInput("--all-versions and --architecture go with --metadata-url")
    from coreos_lab.mirror.fetch import fetch_box

    result = fetch_box(
        MirrorStore(resolve_root(root)),
        distro=distro,
        channel=channel,
        version=version or "current",
        provider=provider or "virtualbox",
        upstream=upstream,
        keyring=keyring,
        force=force,
        reporter=TerminalReporter(),
    )
    signed = f", signatures verified: {', '.join(result.signatures_verified)}" if result.signatures_verified else ""
    _report_stored(result, base_url, as_json, origin=f" from {result.box_url}", detail=signed)


@mirror.command("list")
@root_option
@base_url_option
@json_option
def list_(root: Path | None, base_url: str | None, as_json: bool) -> ExitCode:
    """One row per stored box, with the URLs `lab mirror serve` answers on; then one per container image.
    Exit 1 when something in the root is left out of the catalog (an unreadable directory, a damaged record,
    a box missing or leading out of the root), each named."""
    from coreos_lab import console
    from coreos_lab.errors import BadInput
    from coreos_lab.mirror.images.store import ImageStore
    from coreos_lab.mirror.store import LeftOut, MirrorStore

    store = MirrorStore(resolve_existing_root(root))
    entries, left_out = store.survey()
    rows = [e.as_dict(_base(base_url)) for e in entries]
    image_store = ImageStore(store.root)
    try:
        stored_images = image_store.load_index()
    except BadInput as exc:
        left_out.append(LeftOut(image_store.index_path, exc.message))
        stored_images = []
    images = [
        _image_row(image_store, image, _base(base_url))
        for image in sorted(stored_images, key=lambda i: (i.repository, i.tag))
    ]
    code = ExitCode.ERROR if left_out else ExitCode.OK
    if as_json:
        problems = [{"path": str(p.path), "reason": p.reason} for p in left_out]
        console.print_json({"root": str(store.root), "boxes": rows, "images": images, "left_out": problems})
        return code
    for i, problem in enumerate(left_out, 1):
        hint = "`lab mirror verify` checks the whole root" if i == len(left_out) else None
        console.error(f"left out of the catalog: {problem.path}: {problem.reason}", hint)
    _print_catalog(store.root, rows, images)
    return code


def _print_catalog(root: Path, rows: list[dict[str, Any]], images: list[dict[str, Any]]) -> None:
    from coreos_lab import console

    if not rows:
        console.info(f"no boxes in {root}")
    else:
        header = ("name", "version", "provider", "architecture", "size", "sha256", "metadata_url", "box_url")
        _print_table(
            header,
            [
                (
                    r["name"],
                    r["version"],
                    r["provider"],
                    r["architecture"],
                    human_size(r["size"]),
                    r["sha256"][:12],
                    r["metadata_url"],
                    r["box_url"],
                )
                for r in rows
            ],
        )
    if not images:
        console.info(f"no images in {root}")
        return
    if rows:
        console.out().print()
    _print_table(
        ("image", "digest", "platforms", "size", "pull", "source"),
        [
            (
                f"{i['repository']}:{i['tag']}",
                i["digest"][:19],
                i["platforms"],
                human_size(i["blob_bytes"]),
                i["pull"],
                i["source"] or "",
            )
            for i in images
        ],
    )


def _print_table(header: tuple[str, ...], body: list[tuple[str, ...]]) -> None:
    """Plain aligned columns, never truncated: URLs are meant to be copied."""
    from coreos_lab import console

    table = [header, *body]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        console.out().print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), markup=False)


def _image_row(store: ImageStore, image: StoredImage, base_url: str) -> dict[str, Any]:
    """An image's catalog entry, the bytes of its blobs in the store, and what a client pulls from the mirror."""
    from urllib.parse import urlsplit

    from coreos_lab.errors import BadInput

    try:
        present = {b.digest: b.size for b in store.required_blobs(image.descriptor) if store.has_blob(b.digest)}
    except (BadInput, OSError):  # a damaged manifest or unreadable blob: `lab mirror verify` says which
        present = {}
    host = urlsplit(base_url).netloc or base_url
    return image.as_dict() | {"blob_bytes": sum(present.values()), "pull": f"{host}/{image.name}"}


@mirror.command("verify")
@root_option
@json_option
def verify(root: Path | None, as_json: bool) -> ExitCode:
    """Re-hash every box against its record and every image blob against its digest; exit 1 on any mismatch,
    missing blob, or damaged record, catalog or manifest."""
    from coreos_lab import console
    from coreos_lab.mirror.store import MirrorStore
    from coreos_lab.mirror.verify import verify_store
    from coreos_lab.progress import TerminalReporter

    report = verify_store(MirrorStore(resolve_existing_root(root)), TerminalReporter())
    if as_json:
        console.print_json(report.as_dict())
    else:
        for finding in report.findings:
            line = f"{finding.status:17} {finding.label or finding.path}"
            if finding.failed:
                console.error(f"{line}: {finding.detail} ({finding.path})")
            else:
                console.info(line if finding.label else f"{line}: {finding.detail}")
        summary = report.as_dict()
        verdict = f"{summary['checked']} checked, {summary['failed']} failed in {report.root}"
        (console.success if report.ok else console.info)(verdict)
    return ExitCode.OK if report.ok else ExitCode.ERROR


def _report_stored(
    result: ImportResult | FetchResult, base_url: str | None, as_json: bool, origin: str = "", detail: str = ""
) -> None:
    """What import and fetch print: the JSON document, or one line saying what happened to the box."""
    from coreos_lab import console

    if as_json:
        console.print_json(result.as_dict(_base(base_url)))
    elif result.action == "unchanged":
        console.info(f"{result.entry.key} is already in the mirror (sha256 {result.entry.sha256}); nothing to do")
    else:
        console.success(f"{result.action} {result.entry.key}{origin} (sha256 {result.entry.sha256}{detail})")


def _base(base_url: str | None) -> str:
    from coreos_lab.paths import default_base_url

    return base_url or default_base_url()


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"
