"""`lab mirror fetch --metadata-url`: mirror any Vagrant box from its metadata JSON (Vagrant Cloud's format,
docs/field-notes.md §1), under the document's name: plain (`debian-12`) or Vagrant Cloud-style (`bento/debian-12`).

Every box to fetch is chosen and checked (name, version, provider, architecture, checksum fields) before the
first byte of any box is downloaded, so bad input leaves the store as it was. Each box then goes the way of
`fetch.py`'s: its locked `.part` (resumed), hashed while it arrives, checked against the document's checksum
when it gives one, committed; a mismatch discards the part.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin

from coreos_lab.errors import BadInput, LabError
from coreos_lab.fsutil import naming_io_errors
from coreos_lab.mirror import box_metadata
from coreos_lab.mirror.download import download, emptied_if_refused
from coreos_lab.mirror.fetch import FetchResult, expect_digest, get_file, stored_box_matches
from coreos_lab.mirror.store import CatalogEntry, MirrorStore, check_version, version_key
from coreos_lab.mirror.upstream import http_error, session
from coreos_lab.progress import Reporter, SilentReporter
from coreos_lab.urls import is_http_url

if TYPE_CHECKING:
    import requests

_HINT = "check --metadata-url"


def fetch_any_box(
    store: MirrorStore,
    metadata_url: str,
    *,
    version: str | None = None,
    all_versions: bool = False,
    provider: str | None = None,
    architecture: str | None = None,
    force: bool = False,
    reporter: Reporter | None = None,
    http: requests.Session | None = None,
) -> list[FetchResult]:
    """The boxes `metadata_url` describes for `provider` and `architecture` (each when given): of `version`, of
    every version (`all_versions`), else of the newest version that has one. One result per box, in order."""
    reporter = reporter or SilentReporter()
    if not is_http_url(metadata_url):
        raise BadInput(f"--metadata-url {metadata_url!r} is not an http(s) URL")
    if version is not None and all_versions:
        raise BadInput("--version and --all-versions exclude each other")
    if version is not None:
        check_version(version, "--version")
    http = http or session()
    try:
        doc = box_metadata.parse(get_file(http, metadata_url), metadata_url)
    except LabError as exc:
        raise type(exc)(exc.message, hint=_HINT, exit_code=exc.exit_code) from exc
    offered = [v for v in box_metadata.versions(doc) if _offers(doc, v, provider, architecture)]
    if version is not None or not offered:
        wanted = [version] if version is not None else [None]  # `select` names what the document has
    elif all_versions:
        wanted = list(dict.fromkeys(offered))
    else:
        wanted = [max(offered, key=version_key)]
    chosen = [
        box_metadata.select(
            doc, metadata_url, version=v, provider=provider, architecture=architecture, require_checksum=False
        )
        for v in wanted
    ]
    for source in chosen:
        if source.url is None or not is_http_url(urljoin(metadata_url, source.url)):
            raise BadInput(f"{metadata_url}: the url of {source.key} is not an http(s) URL: {source.url!r}")
    return [_fetch_one(store, http, metadata_url, source, force=force, reporter=reporter) for source in chosen]


def _offers(doc: dict[str, Any], version: str, provider: str | None, architecture: str | None) -> bool:
    """Whether `doc` lists a box of `version` for `provider` and `architecture` (each when given)."""
    for ver in doc["versions"]:
        if not isinstance(ver, dict) or ver.get("version") != version or not isinstance(ver.get("providers"), list):
            continue
        for prov in ver["providers"]:
            if (
                isinstance(prov, dict)
                and (provider is None or prov.get("name") == provider)
                and (architecture is None or prov.get("architecture", "amd64") == architecture)
            ):
                return True
    return False


def _fetch_one(
    store: MirrorStore,
    http: requests.Session,
    metadata_url: str,
    chosen: box_metadata.BoxSource,
    *,
    force: bool,
    reporter: Reporter,
) -> FetchResult:
    assert chosen.url is not None
    box_url = urljoin(metadata_url, chosen.url)
    key = chosen.key
    if not chosen.checksum_type:
        reporter.note(f"{metadata_url} gives no checksum for {key}: stored with the sha256 of what arrives")

    def differs(stored: CatalogEntry) -> str | None:
        if chosen.checksum_type:
            if stored_box_matches(store, stored, chosen):
                return None
            return f"but {metadata_url} describes a different box ({chosen.checksum_type} {chosen.checksum})"
        return None if stored.source == box_url else f"which came from {stored.source}, not {box_url}"

    on_wait = lambda: reporter.note(f"waiting for another lab process writing {key}")  # noqa: E731
    with naming_io_errors(), store.staging(key, on_wait=on_wait) as part:
        admission = store.admit(key, force=force, differs=differs)
        if admission.unchanged is not None:
            return FetchResult(admission.unchanged, "unchanged", metadata_url, box_url)
        algorithms = ["sha256", *([chosen.checksum_type] if chosen.checksum_type else [])]
        got = download(http, box_url, part, algorithms, reporter, status_error=_box_status_error)
        if chosen.checksum_type:
            with emptied_if_refused(part):
                expect_digest(
                    got.digests[chosen.checksum_type], chosen.checksum, chosen.checksum_type, box_url, metadata_url
                )
        entry = store.commit(
            key, Path(part.name), sha256=got.digests["sha256"], source=box_url, description=chosen.description
        )
    return FetchResult(
        entry,
        admission.action,
        metadata_url,
        box_url,
        resumed_from=got.resumed_from,
        range_ignored=got.range_ignored,
    )


def _box_status_error(url: str, resp: requests.Response) -> LabError:
    error = http_error(url, resp.status_code, resp.reason)
    error.hint = f"the box URL comes from the metadata; {_HINT}" if resp.status_code == 404 else error.hint
    return error
