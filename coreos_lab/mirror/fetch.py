"""`lab mirror fetch`: download a CoreOS or Flatcar Vagrant box from a release server into the mirror.

Order of work: resolve `current` through version.txt (then read everything from the concrete version's
directory, so a release published meanwhile cannot mix two versions); read the JSON, `.DIGESTS` and the
optional signatures; with a keyring, check the DIGESTS signature before any large download; download the
box into its locked `.part` (resuming an earlier one), hashing as it arrives; check the JSON checksum, the
DIGESTS sha512 and, with a keyring, the box's `.sig`; keep the upstream files beside the version; commit.
Any mismatch discards the part and leaves the store as it was. A provider the release server has no box for, but
that the distro's row makes from its QEMU image (Flatcar's libvirt), is fetched by `qemu_box.py` the same way.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin

from coreos_lab.errors import BadInput
from coreos_lab.fsutil import naming_io_errors
from coreos_lab.mirror import box_metadata, gpg
from coreos_lab.mirror.checksums import file_digests
from coreos_lab.mirror.download import download, emptied_if_refused
from coreos_lab.mirror.store import CatalogEntry, MirrorStore, check_version
from coreos_lab.mirror.upstream import (
    ReleaseChannel,
    get_small,
    parse_digests,
    parse_version_txt,
    release_channel,
    session,
)
from coreos_lab.progress import Reporter, SilentReporter

if TYPE_CHECKING:
    import requests

_CLEARSIGNED = b"-----BEGIN PGP SIGNED MESSAGE-----"


@dataclass(frozen=True)
class FetchResult:
    entry: CatalogEntry
    action: str  # "added", "replaced" or "unchanged"
    metadata_url: str
    box_url: str
    resumed_from: int = 0
    range_ignored: bool = False
    signatures_verified: list[str] = field(default_factory=list)

    def as_dict(self, base_url: str | None = None) -> dict[str, Any]:
        return {
            "action": self.action,
            "box": self.entry.as_dict(base_url),
            "upstream": {"metadata_url": self.metadata_url, "box_url": self.box_url},
            "resumed_from": self.resumed_from,
            "range_ignored": self.range_ignored,
            "signatures_verified": self.signatures_verified,
        }


def fetch_box(
    store: MirrorStore,
    *,
    distro: str = "flatcar",
    channel: str = "stable",
    version: str = "current",
    provider: str = "virtualbox",
    upstream: str | None = None,
    keyring: Path | None = None,
    force: bool = False,
    reporter: Reporter | None = None,
    http: requests.Session | None = None,
) -> FetchResult:
    reporter = reporter or SilentReporter()
    release = release_channel(distro, channel, upstream)
    if keyring is not None and not keyring.is_file():
        raise BadInput(f"--keyring {keyring}: no such file")
    http = http or session()
    concrete = resolve_version(http, release, version)
    if version == "current":
        reporter.note(f"{release.box_name}: current is {concrete}")
    if provider in release.distro.boxes_from_qemu_image:  # no such box upstream: made from the QEMU image
        from coreos_lab.mirror.qemu_box import fetch_qemu_image_box

        return fetch_qemu_image_box(
            store, release, concrete, provider=provider, keyring=keyring, force=force, reporter=reporter, http=http
        )

    json_url = release.file_url(concrete, ".json")
    metadata = get_file(http, json_url)
    chosen = box_metadata.select(
        box_metadata.parse(metadata, json_url),
        json_url,
        name=release.box_name,
        version=concrete,
        provider=provider,
    )
    if chosen.url is None:
        raise BadInput(f"{json_url}: the {provider} provider has no url")
    box_url = release.box_url_for(urljoin(json_url, chosen.url))
    digests_url = release.file_url(concrete, ".box.DIGESTS")
    side_files = {
        ".json": metadata,
        ".box.DIGESTS": get_file(http, digests_url),
        ".box.DIGESTS.asc": get_small(http, release.file_url(concrete, ".box.DIGESTS.asc"), optional=True),
        ".box.sig": get_small(http, release.file_url(concrete, ".box.sig"), optional=True),
    }
    stem = release.distro.file_stem
    key = chosen.key
    with tempfile.TemporaryDirectory(prefix="lab-fetch-") as tmp:
        scratch = Path(tmp) / "upstream"  # exactly the upstream files, kept beside the version on success
        scratch.mkdir()
        for suffix, data in side_files.items():
            if data is not None:
                with naming_io_errors(scratch / f"{stem}{suffix}"):
                    (scratch / f"{stem}{suffix}").write_bytes(data)
        verified: list[str] = []
        digests_text = side_files[".box.DIGESTS"] or b""
        if keyring is not None:
            digests_text = verify_digests_signature(keyring, scratch, f"{stem}.box", verified)
        sha512 = parse_digests(digests_text.decode("utf-8", "replace"), f"{stem}.box", digests_url).get("sha512")
        if sha512 is None:
            raise BadInput(f"{digests_url}: field SHA512 HASH for {stem}.box is missing")

        on_wait = lambda: reporter.note(f"waiting for another lab process writing {key}")  # noqa: E731

        def differs(stored: CatalogEntry) -> str | None:
            if stored_box_matches(store, stored, chosen):
                return None
            return f"but {json_url} describes a different box ({chosen.checksum_type} {chosen.checksum})"

        with naming_io_errors(), store.staging(key, on_wait=on_wait) as part:
            admission = store.admit(key, force=force, differs=differs)
            if admission.unchanged is not None:
                return FetchResult(admission.unchanged, "unchanged", json_url, box_url)
            got = download(http, box_url, part, ["sha256", "sha512", chosen.checksum_type], reporter)
            with emptied_if_refused(part):
                expect_digest(
                    got.digests[chosen.checksum_type], chosen.checksum, chosen.checksum_type, box_url, json_url
                )
                expect_digest(got.digests["sha512"], sha512, "sha512", box_url, digests_url)
                if keyring is not None and side_files[".box.sig"] is not None:
                    gpg.verify(keyring, scratch / f"{stem}.box.sig", Path(part.name))
                    verified.append(f"{stem}.box.sig")
            store.keep_upstream_files(key.name, key.version, scratch)  # side files first: the box comes last
            entry = store.commit(
                key, Path(part.name), sha256=got.digests["sha256"], source=box_url, description=chosen.description
            )
    return FetchResult(
        entry,
        admission.action,
        json_url,
        box_url,
        resumed_from=got.resumed_from,
        range_ignored=got.range_ignored,
        signatures_verified=verified,
    )


def resolve_version(http: requests.Session, release: ReleaseChannel, version: str) -> str:
    """`current` through the channel's version.txt; any other value must be a box version."""
    if version != "current":
        return check_version(version, "--version")
    url = release.version_txt_url()
    text = get_file(http, url).decode("utf-8", "replace")
    concrete = parse_version_txt(text, release.distro.version_variable, url)
    try:
        return check_version(concrete, release.distro.version_variable)
    except BadInput as exc:
        raise BadInput(f"{url}: {exc.message}") from exc


def get_file(http: requests.Session, url: str) -> bytes:
    data = get_small(http, url)
    assert data is not None
    return data


def verify_digests_signature(keyring: Path, scratch: Path, file: str, verified: list[str]) -> bytes:
    """Check the signature of `<file>.DIGESTS` in `scratch` (the release's side files of `file`): the clearsigned or
    detached `<file>.DIGESTS.asc`, else only `<file>.sig` (checked after the download). Returns the DIGESTS text to
    trust (the signed text when clearsigned); names the signed files in `verified`."""
    digests_path, asc_path = scratch / f"{file}.DIGESTS", scratch / f"{file}.DIGESTS.asc"
    if not asc_path.exists() and not (scratch / f"{file}.sig").exists():
        raise BadInput(f"--keyring given, but the release has neither {asc_path.name} nor {file}.sig")
    digests = digests_path.read_bytes() if digests_path.exists() else b""
    if not asc_path.exists():
        return digests
    if asc_path.read_bytes().lstrip().startswith(_CLEARSIGNED):
        signed_text = scratch.parent / "signed-digests"
        gpg.verify(keyring, asc_path, output=signed_text)
        digests = signed_text.read_bytes()
    else:
        gpg.verify(keyring, asc_path, digests_path)
    verified.append(asc_path.name)
    return digests


def stored_box_matches(store: MirrorStore, entry: CatalogEntry, chosen: box_metadata.BoxSource) -> bool:
    if chosen.checksum_type == "sha256":
        return entry.sha256 == chosen.checksum
    stored = store.artifact_path(entry.key)
    return file_digests(stored, [chosen.checksum_type])[chosen.checksum_type] == chosen.checksum


def expect_digest(actual: str, expected: str, kind: str, box_url: str, source: str) -> None:
    if actual != expected:
        raise BadInput(f"{box_url}: {kind} is {actual}, but {source} says {expected} (wrong checksum)")
