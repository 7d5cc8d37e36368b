"""`lab mirror publish`: the catalog written out as static files that any web server or object store can serve.

What is written is what `lab mirror serve` answers (`MirrorLayout.paths` and `resolve`: one source of the metadata
documents), with every URL under the base URL the files will be served at:

    index.html                              the index page (a web server's index rule serves it at `/`)
    <name>.json, and <name> where the       Vagrant box metadata, `application/json`
      destination allows it (S3)
    <name>/<version>/<provider>-<arch>.box  the boxes
    seed-style and release-layout JSON, version.txt, DIGESTS and signatures
    .coreos-lab-publish.json                the record of what was published: path → size, sha256

A directory cannot hold a file `<name>` beside the directory `<name>/` (docs/field-notes.md §10), so there the
metadata is only at `<name>.json` and the web server maps `/<name>` to it (README: nginx's `try_files $uri
$uri.json`). The release layout's `<distro>_production_vagrant.box` is not copied a second time: its JSON points
at the box's own URL, which is what `lab mirror fetch --upstream` follows.

Order, so that a reader never sees a URL to a box that is not there yet: files first, each written atomically
(a directory: a temporary name, then a rename; S3: an object exists only once its upload completed) and
checked; then the documents that point at them, the index and the record last. Files whose size and sha256
equal the record's, and that are still there with that size, are not written again. Boxes gone from the catalog
stay (old metadata may still point at them) unless `delete`: then they go after the new metadata is written.
"""

from __future__ import annotations

import fcntl
import json
import mimetypes
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path
from stat import S_IROTH, S_ISREG, S_IWOTH
from typing import Any, Protocol

from coreos_lab.errors import BadInput, LabError
from coreos_lab.fsutil import atomic_write_bytes
from coreos_lab.mirror.chunk_worker import ChunkWorker
from coreos_lab.mirror.layout import Metadata, MirrorLayout, Page, StoredFile, Text, render_index
from coreos_lab.mirror.store import BOX, ArtifactKind, CatalogEntry, MirrorStore, sync_file
from coreos_lab.progress import Reporter, SilentReporter

RECORD_NAME = ".coreos-lab-publish.json"
LOCK_NAME = ".coreos-lab-publish.lock"
INDEX_NAME = "index.html"
JSON_TYPE = "application/json"
COPY_CHUNK = 8 * 1024 * 1024


@dataclass(frozen=True)
class PublishedFile:
    """One file of the published catalog: a store file copied as it is (`source`), or a document (`data`)."""

    path: str  # below the destination, '/'-separated, no leading '/'
    size: int
    sha256: str
    content_type: str
    source: Path | None = None
    data: bytes | None = None
    is_box: bool = False

    @property
    def is_document(self) -> bool:
        return self.data is not None


class Destination(Protocol):
    """Where the files go: a directory (`DirectoryDestination`) or an S3 prefix (`mirror.s3.S3Destination`)."""

    label: str  # for messages: the directory, or s3://bucket/prefix
    holds_file_beside_directory: bool  # whether `<name>` and `<name>/…` can both exist

    def sizes(self, paths: Iterable[str]) -> dict[str, int]:
        """The size of each of `paths` that exists there."""

    def put_file(self, file: PublishedFile, reporter: Reporter) -> bool:
        """Write a store file, complete and checked (size, and sha256 where the copy is hashed), atomically. True
        when it was not written but hard-linked to the store's file (a directory on the store's filesystem)."""

    def put_document(self, file: PublishedFile) -> None:
        """Write a document atomically, with its content type."""

    def read(self, path: str) -> bytes | None:
        """A file's bytes, None when there is none."""

    def delete(self, path: str) -> None: ...

    def lock(self, on_wait: Callable[[], None]) -> AbstractContextManager[object]:
        """Held for the whole publish: two publishes to one destination take turns where that can be arranged."""


@dataclass
class PublishResult:
    destination: str
    base_url: str
    names: list[str]
    written: list[str] = field(default_factory=list)
    linked: list[str] = field(default_factory=list)  # of `written`: hard links to the store's files, no bytes copied
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # published earlier, gone from the catalog, kept (no --delete)
    bytes_written: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "destination": self.destination,
            "base_url": self.base_url,
            "names": self.names,
            "metadata_urls": [f"{self.base_url}/{name}" for name in self.names],
            "written": self.written,
            "linked": self.linked,
            "unchanged": len(self.unchanged),
            "removed": self.removed,
            "kept": self.kept,
            "bytes_written": self.bytes_written,
        }


# -- what to publish ---------------------------------------------------------------------------------------
class CatalogSnapshot(MirrorStore):
    """The catalog as it was when the publish began, read once: the layout asks for the entries once per path
    (thousands of record reads for a catalog of a hundred boxes), and every document written agrees with the
    others even when a fetch adds a box meanwhile."""

    def __init__(self, store: MirrorStore):
        super().__init__(store.root)
        self._entries = store.entries()

    def entries(self, name: str | None = None, kind: ArtifactKind | None = None) -> list[CatalogEntry]:
        return [e for e in self._entries if name in (None, e.name) and kind in (None, e.kind)]


def catalog_files(store: MirrorStore, base_url: str, *, file_beside_directory: bool = True) -> list[PublishedFile]:
    """Every file of the published catalog, with its size and sha256 (boxes: from their records)."""
    if not isinstance(store, CatalogSnapshot):
        store = CatalogSnapshot(store)
    layout = MirrorLayout(store)
    boxes = {store.artifact_path(e.key).resolve(): e for e in store.entries(kind=BOX)}
    paths = [p.lstrip("/") for p in layout.paths() if p != "/"]
    directories = {"/".join(p.split("/")[:i]) for p in paths for i in range(1, p.count("/") + 1)}
    files = [_document(INDEX_NAME, render_index(list(boxes.values()), base_url).encode(), "text/html; charset=utf-8")]
    for path in paths:
        if path in directories and not file_beside_directory:
            continue  # `<name>` beside `<name>/`: served from `<name>.json` (see the module's docstring)
        match layout.resolve(f"/{path}", base_url):
            case Metadata(document):
                files.append(_document(path, (json.dumps(document, indent=2) + "\n").encode(), JSON_TYPE))
            case Text(text):
                files.append(_document(path, text.encode(), "text/plain; charset=utf-8"))
            case Page(page):
                files.append(_document(path, page.encode(), "text/html; charset=utf-8"))
            case StoredFile(source):
                entry = boxes.get(source)
                if entry is not None and path != entry.key.relpath:
                    continue  # the release layout's copy of a box (see the module's docstring)
                if entry is not None:
                    files.append(
                        PublishedFile(path, entry.size, entry.sha256, "application/octet-stream", source, is_box=True)
                    )
                else:
                    data = source.read_bytes()  # an upstream side file: DIGESTS, a signature (small)
                    files.append(PublishedFile(path, len(data), sha256(data).hexdigest(), _guess_type(path), source))
    return files


def _document(path: str, data: bytes, content_type: str) -> PublishedFile:
    return PublishedFile(path, len(data), sha256(data).hexdigest(), content_type, data=data)


def _guess_type(path: str) -> str:
    return mimetypes.guess_type(path)[0] or "application/octet-stream"


# -- publishing --------------------------------------------------------------------------------------------
def publish(
    store: MirrorStore,
    destination: Destination,
    base_url: str,
    *,
    delete: bool = False,
    reporter: Reporter | None = None,
) -> PublishResult:
    """Write the catalog to `destination`, its URLs under `base_url`; only what changed since the last publish."""
    reporter = reporter or SilentReporter()
    _check_not_empty(store)  # before the destination is touched
    with destination.lock(lambda: reporter.note(f"waiting for another publish to {destination.label} to finish")):
        # Read under the lock: a publish that waited must not write an older catalog over a newer one.
        return _publish(CatalogSnapshot(store), destination, base_url, delete=delete, reporter=reporter)


def _publish(
    store: CatalogSnapshot, destination: Destination, base_url: str, *, delete: bool, reporter: Reporter
) -> PublishResult:
    names = _check_not_empty(store)
    files = catalog_files(store, base_url, file_beside_directory=destination.holds_file_beside_directory)
    record = _read_record(destination)
    present = destination.sizes([f.path for f in files] + list(record or {}))
    if record is None:
        # The first publish here: never overwrite what someone else put there (their own index.html, …).
        foreign = [f.path for f in files if f.path in present]
        if foreign:
            raise BadInput(
                f"{destination.label} already holds files `lab mirror publish` did not write: "
                + ", ".join(foreign[:3])
                + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""),
                hint="publish to an empty directory or prefix, or move those files away",
            )
        record = {}
        _write_record(destination, base_url, record)  # from now on, what is there and unrecorded is ours
    published, recorded = dict(record), record
    result = PublishResult(destination.label, base_url, names)

    def unchanged(file: PublishedFile) -> bool:
        return (
            published.get(file.path) == {"size": file.size, "sha256": file.sha256}
            and present.get(file.path) == file.size
        )

    # Boxes and other store files first; then the documents that point at them; the index; the record.
    for file in sorted(files, key=lambda f: (f.is_document, f.path == INDEX_NAME)):
        if unchanged(file):
            result.unchanged.append(file.path)
            continue
        linked = False
        try:
            if file.is_document:
                destination.put_document(file)
            else:
                linked = destination.put_file(file, reporter)
        except OSError as exc:  # a box removed from the store meanwhile, a full disk, …
            raise LabError(f"writing {file.path} to {destination.label}: {exc.strerror or exc}") from exc
        published[file.path] = {"size": file.size, "sha256": file.sha256}
        if not file.is_document:
            _write_record(destination, base_url, published)  # at once: a publish cut short later keeps this box
        result.written.append(file.path)
        if linked:
            result.linked.append(file.path)
        else:
            result.bytes_written += file.size
    wanted = {f.path for f in files}
    stale = sorted((p for p in published if p not in wanted), key=lambda p: (p.endswith(BOX.suffix), p))
    if delete:
        # Documents before the boxes they may point at; the new metadata no longer names any of them.
        for path in stale:
            destination.delete(path)
            del published[path]
            result.removed.append(path)
    else:
        result.kept = [p for p in stale if p in present]
        for path in stale:
            if path not in present:
                del published[path]  # removed by someone else: nothing to keep track of
    if published != recorded:
        _write_record(destination, base_url, published)
    return result


def _check_not_empty(store: MirrorStore) -> list[str]:
    names = store.names(BOX)
    if not names:
        raise BadInput(
            f"nothing to publish: the mirror at {store.root} has no boxes",
            hint="add boxes with `lab mirror fetch` / `lab mirror import`, or pass --root",
        )
    return names


def _write_record(destination: Destination, base_url: str, published: dict[str, dict[str, Any]]) -> None:
    record = {"base_url": base_url, "files": dict(sorted(published.items()))}
    destination.put_document(_document(RECORD_NAME, (json.dumps(record, indent=1) + "\n").encode(), JSON_TYPE))


def _read_record(destination: Destination) -> dict[str, dict[str, Any]] | None:
    """What the last publish wrote there (path → size, sha256); None when nothing was ever published there, empty
    when the record is damaged."""
    data = destination.read(RECORD_NAME)
    if data is None:
        return None
    try:
        files = json.loads(data)["files"]
        return {str(p): {"size": int(v["size"]), "sha256": str(v["sha256"])} for p, v in files.items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        return {}  # damaged: everything is written again, which repairs it


# -- a directory -------------------------------------------------------------------------------------------
def _hard_link(file: PublishedFile, link: Path) -> bool:
    """Link `link` to the store file, if it has the catalog's size and the mode a served file needs (readable by
    others, not writable by them). False, with nothing made, where no link can be: another filesystem
    (EXDEV), one without hard links, a kernel that refuses to link another user's file (protected_hardlinks)."""
    assert file.source is not None
    try:
        mode = file.source.stat().st_mode
        if not mode & S_IROTH or mode & S_IWOTH:
            return False
        os.link(file.source, link)
    except OSError:
        return False  # the copy that follows fails with the reason, if there is one that a copy meets too
    size = link.stat().st_size
    if size != file.size:
        link.unlink()
        raise LabError(f"linking {file.source} to {link}: {size} bytes, the catalog says {file.size}")
    return True


class DirectoryDestination:
    """A directory a web server serves (nginx, Apache, GitLab/GitHub Pages).

    On the store's filesystem a store file is published as a hard link to it (as uv and pnpm install from their
    caches): no bytes copied, no second copy of each box on the disk, and nothing to flush, since the store flushed
    the file when it was added. The store never writes a file in place (a box replaced is a new file renamed over
    the old name), so the published box stays what it was when published. `copy` (`--copy`) writes copies
    instead; so does a store file a web server could not read (not readable by others) or that others may write,
    and any file on another filesystem."""

    holds_file_beside_directory = False

    def __init__(self, root: Path, *, copy: bool = False):
        self.root = root
        self.label = str(root)
        self.copy = copy

    @classmethod
    def open(cls, root: Path, mirror_root: Path, *, copy: bool = False) -> DirectoryDestination:
        if root.exists() and not root.is_dir():
            raise BadInput(f"publish destination {root} is not a directory")
        resolved, store = root.resolve(), mirror_root.resolve()
        if resolved == store or resolved.is_relative_to(store) or store.is_relative_to(resolved):
            raise BadInput(f"publish destination {root} overlaps the mirror root {mirror_root}: pick another directory")
        return cls(root, copy=copy)

    def _path(self, path: str) -> Path:
        return self.root.joinpath(*path.split("/"))

    def sizes(self, paths: Iterable[str]) -> dict[str, int]:
        found = {}
        for path in paths:
            try:
                stat = self._path(path).stat()
            except OSError:
                continue
            if S_ISREG(stat.st_mode):
                found[path] = stat.st_size
        return found

    def put_file(self, file: PublishedFile, reporter: Reporter) -> bool:
        """A hard link where it can be (the class's docstring), else a copy, renamed into place either way.

        The copy: a kernel copy (no second hashing pass: the store checked the box's sha256 when it was added, and
        `lab mirror verify` re-hashes it), flushed to disk and its size checked, then renamed into place.

        The flush runs beside the copy: after each `COPY_CHUNK` a thread of its own waits for the bytes copied so
        far to reach the disk (fdatasync), so the disk writes while the copy goes on and the fsync before the
        rename finds only the tail left. Flushing after the copy instead costs the copy plus the whole write."""
        assert file.source is not None
        final = self._path(file.path)
        final.parent.mkdir(parents=True, exist_ok=True)
        # A fixed temporary name: a copy cut short is overwritten by the next publish, never left to pile up.
        temporary = final.with_name(f".{final.name}.publishing")
        temporary.unlink(missing_ok=True)
        try:
            if not self.copy and _hard_link(file, temporary):
                os.replace(temporary, final)
                return True
            with file.source.open("rb") as src, temporary.open("wb") as dst:
                flusher = ChunkWorker(lambda _: os.fdatasync(dst.fileno()), "publish-flush", backlog=1)
                try:
                    with reporter.transfer(f"copying {file.path}", file.size) as advance:
                        copied = 0
                        while sent := os.sendfile(dst.fileno(), src.fileno(), copied, COPY_CHUNK):
                            copied += sent
                            advance(sent)
                            flusher.offer(b"")  # not taken while a flush is under way: the next one covers it
                finally:
                    flusher.finish()
                os.fchmod(dst.fileno(), 0o644)
            if copied != file.size:
                raise LabError(f"copying {file.source} to {final}: {copied} bytes, the catalog says {file.size}")
            sync_file(temporary)
            os.replace(temporary, final)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        return False

    def put_document(self, file: PublishedFile) -> None:
        assert file.data is not None
        atomic_write_bytes(self._path(file.path), file.data)

    def read(self, path: str) -> bytes | None:
        try:
            return self._path(path).read_bytes()
        except OSError:
            return None

    @contextmanager
    def lock(self, on_wait: Callable[[], None]) -> Iterator[object]:
        """An exclusive lock on DEST/.coreos-lab-publish.lock: two publishes would otherwise share the temporary
        names, and one could rename into place a box the other is still writing."""
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / LOCK_NAME).open("a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                on_wait()
                fcntl.flock(handle, fcntl.LOCK_EX)
            yield handle

    def delete(self, path: str) -> None:
        target = self._path(path)
        target.unlink(missing_ok=True)
        for directory in target.parents:  # the version and name directories only it kept
            if directory == self.root:
                break
            try:
                directory.rmdir()
            except OSError:
                break
