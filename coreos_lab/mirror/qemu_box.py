"""A Vagrant libvirt box made from a release's QEMU image: `lab mirror fetch --distro flatcar --provider libvirt`.

Flatcar publishes no libvirt box, but every release has `flatcar_production_qemu_image.img` (qcow2) with
`….img.DIGESTS`, `….img.DIGESTS.asc` and `….img.sig` (docs/field-notes.md §11). The image is fetched and verified
as a box is (`fetch.py`: the concrete version's directory, DIGESTS signature before the download, sha512 and the
image's own signature after it, resumable), and becomes the box as it arrives: the box's `.part` in the store is
the box's tar archive, whose first member, `box.img`, is the image. Its 512-byte tar header is left empty while
the image downloads (so the part resumes like any download, `ImageInBox` hiding the header) and is written once
the image is complete and verified; then `metadata.json` (`provider`, `format: qcow2`, `virtual_size` in GB, read
from the qcow2 header) and the `Vagrantfile` (`vagrant/qemu_image_box.py`) follow, the box is hashed and
committed. A refused image empties the part; the store never holds a box made from an unverified image.
"""

from __future__ import annotations

import json
import math
import struct
import tarfile
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, cast

from coreos_lab.errors import BadInput
from coreos_lab.mirror import gpg
from coreos_lab.mirror.checksums import file_digests
from coreos_lab.mirror.download import download, emptied_if_refused
from coreos_lab.mirror.fetch import FetchResult, expect_digest, get_file, verify_digests_signature
from coreos_lab.mirror.store import DEFAULT_ARCH, BoxKey, CatalogEntry, MirrorStore
from coreos_lab.mirror.upstream import ReleaseChannel, get_small, parse_digests
from coreos_lab.progress import Reporter
from coreos_lab.vagrant.qemu_image_box import box_vagrantfile

if TYPE_CHECKING:
    import requests

BLOCK = tarfile.BLOCKSIZE  # 512: a tar header, and the unit every member is padded to
QCOW2_MAGIC = b"QFI\xfb"  # QEMU's qcow2 header: magic, version, …, the virtual size (big-endian u64) at byte 24
GIB = 1 << 30


class ImageInBox:
    """The image member of a box being downloaded: the part file seen from byte 512 on, so that `download`
    resumes, hashes and truncates the image alone while the tar header before it stays reserved."""

    offset = BLOCK  # where the image starts in the part file (`download` hashes a resumed prefix from there)

    def __init__(self, part: BinaryIO):
        self.part = part

    def fileno(self) -> int:
        return self.part.fileno()

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 2:
            end = self.part.seek(0, 2)
            return self.part.seek(max(end, BLOCK) + offset) - BLOCK
        return self.part.seek(BLOCK + offset if whence == 0 else offset, whence) - BLOCK

    def tell(self) -> int:
        return self.part.tell() - BLOCK

    def read(self, size: int = -1) -> bytes:
        return self.part.read(size)

    def write(self, data: bytes) -> int:
        return self.part.write(data)

    def truncate(self, size: int | None = None) -> int:
        size = self.tell() if size is None else size
        self.part.truncate(BLOCK + size if size else 0)  # no image: an empty part (which the store removes)
        return size

    def flush(self) -> None:
        self.part.flush()


def fetch_qemu_image_box(
    store: MirrorStore,
    release: ReleaseChannel,
    version: str,
    *,
    provider: str,
    keyring: Path | None,
    force: bool,
    reporter: Reporter,
    http: requests.Session,
) -> FetchResult:
    """Fetch `version`'s QEMU image from `release` into the mirror as the `provider` box of the channel's name."""
    image = release.distro.qemu_image_file
    image_url = release.url_of(version, image)
    digests_url = f"{image_url}.DIGESTS"
    side_files = {
        f"{image}.DIGESTS": get_file(http, digests_url),
        f"{image}.DIGESTS.asc": get_small(http, f"{image_url}.DIGESTS.asc", optional=True),
        f"{image}.sig": get_small(http, f"{image_url}.sig", optional=True),
    }
    key = BoxKey(release.box_name, version, provider, DEFAULT_ARCH)
    with tempfile.TemporaryDirectory(prefix="lab-fetch-") as tmp:
        scratch = Path(tmp) / "upstream"  # exactly the upstream files, kept beside the version on success
        scratch.mkdir()
        for name, data in side_files.items():
            if data is not None:
                (scratch / name).write_bytes(data)
        verified: list[str] = []
        digests_text = side_files[f"{image}.DIGESTS"] or b""
        if keyring is not None:
            digests_text = verify_digests_signature(keyring, scratch, image, verified)
        sha512 = parse_digests(digests_text.decode("utf-8", "replace"), image, digests_url).get("sha512")
        if sha512 is None:
            raise BadInput(f"{digests_url}: field SHA512 HASH for {image} is missing")

        def differs(stored: CatalogEntry) -> str | None:
            kept = store.upstream_dir(key.name, key.version) / f"{image}.DIGESTS"
            try:
                before = parse_digests(kept.read_text(errors="replace"), image, str(kept)).get("sha512")
            except OSError:
                before = None
            if before == sha512:
                return None
            return f"but {digests_url} describes a different image (sha512 {sha512})"

        on_wait = lambda: reporter.note(f"waiting for another lab process writing {key}")  # noqa: E731
        with store.staging(key, on_wait=on_wait) as part:
            admission = store.admit(key, force=force, differs=differs)
            if admission.unchanged is not None:
                return FetchResult(admission.unchanged, "unchanged", digests_url, image_url)
            _start_over_after_a_finished_box(part)
            got = download(http, image_url, cast(BinaryIO, ImageInBox(part)), ["sha512"], reporter)
            with emptied_if_refused(part):
                expect_digest(got.digests["sha512"], sha512, "sha512", image_url, digests_url)
                if keyring is not None and side_files[f"{image}.sig"] is not None:
                    unpacked = Path(tmp) / image  # gpg checks a detached signature over a file of its own
                    with unpacked.open("wb") as out:
                        _copy_image(part, got.size, out)
                    gpg.verify(keyring, scratch / f"{image}.sig", unpacked)
                    unpacked.unlink()
                    verified.append(f"{image}.sig")
                virtual_size = qcow2_virtual_size(part, image_url)
            source = f"{image} {version} ({image_url})"
            _finish_box(part, got.size, provider, virtual_size, box_vagrantfile(release.distro, source), reporter)
            with reporter.transfer(f"hashing {key.name} {key.version}", part.seek(0, 2)) as advance:
                sha256 = file_digests(Path(part.name), ["sha256"], advance)["sha256"]
            store.keep_upstream_files(key.name, key.version, scratch)  # side files first: the box comes last
            description = f"{release.distro.title} {release.channel} {version}, made from {image}"
            entry = store.commit(key, Path(part.name), sha256=sha256, source=image_url, description=description)
    return FetchResult(
        entry,
        admission.action,
        digests_url,
        image_url,
        resumed_from=got.resumed_from,
        range_ignored=got.range_ignored,
        signatures_verified=verified,
    )


def _start_over_after_a_finished_box(part: BinaryIO) -> None:
    """A part whose tar header is written is a whole box that a run stopped before its commit: not an image to
    resume (the image alone starts at byte 512 with an empty header before it)."""
    part.seek(0)
    if part.read(BLOCK).strip(b"\0"):
        part.seek(0)
        part.truncate()


def qcow2_virtual_size(part: BinaryIO, source: str) -> int:
    """The disk size the image gives the guest, in bytes, from its qcow2 header; `BadInput` when it is no qcow2
    image (vagrant-libvirt takes only qcow2 boxes)."""
    part.seek(BLOCK)
    header = part.read(32)
    if len(header) < 32 or not header.startswith(QCOW2_MAGIC):
        raise BadInput(f"{source} is not a qcow2 image (it starts with {header[:8]!r}); a libvirt box needs qcow2")
    (size,) = struct.unpack(">Q", header[24:32])
    return int(size)


def _copy_image(part: BinaryIO, size: int, out: BinaryIO) -> None:
    part.seek(BLOCK)
    left = size
    while left and (chunk := part.read(min(left, 1 << 20))):
        out.write(chunk)
        left -= len(chunk)
    out.flush()


def _member(name: str, data: bytes, size: int | None = None) -> bytes:
    """A tar member's header (GNU format: sizes past 8 GiB fit in its 512 bytes); with `data`, its padded body."""
    info = tarfile.TarInfo(name)
    info.size = len(data) if size is None else size
    info.mode = 0o644
    return info.tobuf(tarfile.GNU_FORMAT) + data + b"\0" * (-len(data) % BLOCK)


def _finish_box(
    part: BinaryIO, image_size: int, provider: str, virtual_size: int, vagrantfile: str, reporter: Reporter
) -> None:
    """Complete the tar archive around the image: its header, its padding, metadata.json, the Vagrantfile, the
    end-of-archive blocks (`metadata.json` and the Vagrantfile follow the image: Vagrant unpacks the whole box)."""
    metadata = {
        "provider": provider,
        "format": "qcow2",
        "virtual_size": math.ceil(virtual_size / GIB),  # vagrant-libvirt reads whole GB
        "architecture": DEFAULT_ARCH,
    }
    header = _member("box.img", b"", image_size)
    assert len(header) == BLOCK
    part.seek(BLOCK + image_size)
    part.truncate()
    part.write(b"\0" * (-image_size % BLOCK))
    part.write(_member("metadata.json", json.dumps(metadata, indent=2).encode() + b"\n"))
    part.write(_member("Vagrantfile", vagrantfile.encode()))
    part.write(b"\0" * (2 * BLOCK))
    part.seek(0)
    part.write(header)
    part.flush()
    reporter.note(f"made a {provider} box: box.img ({image_size} bytes, a {virtual_size} byte disk), Vagrantfile")
