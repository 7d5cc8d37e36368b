"""`lab mirror image fetch`: pull an image from a registry into the mirror's image store.

Order of work: the `/v2/` ping and authentication; the manifest at the tag or digest, verified; for an index,
the chosen platforms' manifests (by digest, verified); the rule of the tag, decided before any large download
(a tag that names another digest is replaced only with `force`); the config and layer blobs the store does not
hold yet, several at a time, each into its locked `.part` (an earlier part resumed with Range), hashed as it
arrives and committed only when its sha256 is its name; the manifests; the tag last. So a refused blob leaves
the catalog as it was, and an interrupted fetch leaves `.part` files the next one resumes.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from coreos_lab.errors import BadInput
from coreos_lab.mirror.checksums import file_digests
from coreos_lab.mirror.download import Downloaded, download, emptied_if_refused
from coreos_lab.mirror.images.auth import Credentials
from coreos_lab.mirror.images.manifests import (
    DEFAULT_PLATFORM,
    Descriptor,
    ImageManifest,
    Platform,
    parse_manifest,
    parse_platform,
)
from coreos_lab.mirror.images.reference import DEFAULT_TAG, ImageRef, parse_reference
from coreos_lab.mirror.images.registry_client import FetchedManifest, RegistryClient, registry_error
from coreos_lab.mirror.images.store import ALL_PLATFORMS, ImageStore, StoredImage, Tally
from coreos_lab.progress import Advance, Reporter, SilentReporter

# Blobs downloaded at once: a registry (or its storage) serves each connection at its own pace.
DEFAULT_JOBS = 4
# Config media types whose JSON says os/architecture (the OCI image config and Docker's, which it copies).
IMAGE_CONFIGS = ("application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json")


@dataclass(frozen=True)
class ImageFetchResult:
    image: StoredImage
    action: str  # "added", "replaced", "updated" (platforms or missing blobs added) or "unchanged"
    source: str  # the upstream reference and the digest it resolved to
    platforms: tuple[str, ...]  # the platforms fetched (of a single-platform image: its own, when it says)
    downloaded: Tally
    reused: Tally  # blobs the store already held (another image's, or an earlier fetch's)
    resumed_bytes: int  # bytes taken from interrupted downloads

    def as_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "image": self.image.as_dict(),
            "source": self.source,
            "platforms": list(self.platforms),
            "downloaded": self.downloaded.as_dict(),
            "reused": self.reused.as_dict(),
            "resumed_bytes": self.resumed_bytes,
        }


@dataclass(frozen=True)
class _Chosen:
    """What a fetch takes: the top manifest or index, the image manifests below it, and the platform label."""

    top: FetchedManifest
    descriptor: Descriptor
    images: list[tuple[FetchedManifest, ImageManifest]]
    platforms: tuple[str, ...]
    label: str  # the catalog's `platforms`: "all", or the platforms, comma-separated
    index_platforms: tuple[str, ...] = ()  # every platform an index offers


def fetch_image(
    store: ImageStore,
    reference: str | ImageRef,
    *,
    platforms: Sequence[str] = (DEFAULT_PLATFORM,),
    all_platforms: bool = False,
    credentials: Credentials | None = None,
    insecure: bool = False,
    force: bool = False,
    jobs: int = DEFAULT_JOBS,
    reporter: Reporter | None = None,
) -> ImageFetchResult:
    reporter = reporter or SilentReporter()
    ref = parse_reference(reference) if isinstance(reference, str) else reference
    wanted = [parse_platform(p) for p in dict.fromkeys(platforms or (DEFAULT_PLATFORM,))]
    with RegistryClient(ref, credentials=credentials, insecure=insecure, jobs=jobs) as client:
        client.ping()
        chosen = _choose(client, ref, wanted, all_platforms)
        repository, tag = ref.repository, ref.tag or DEFAULT_TAG
        source = f"{ref.registry}/{ref.repository}{f':{ref.tag}' if ref.tag else ''}@{chosen.top.digest}"

        verdict, stored = store.admit(repository, tag, chosen.top.digest, force=force, offered=f"{ref} is now")
        action: str = verdict
        label = chosen.label
        if stored is not None and verdict == "same":
            action, label = "updated", _merged_label(stored.platforms, chosen)

        blobs = list({b.digest: b for _, image in chosen.images for b in image.blobs}.values())
        missing = [b for b in blobs if not store.has_blob(b.digest)]
        reused = Tally(len(blobs) - len(missing), sum(b.size for b in blobs if b not in missing))
        single = chosen.images[0][0] is chosen.top  # a single-platform image: its config says for which platform
        if stored is not None and action == "updated" and not missing and _covers(stored.platforms, label):
            if single:  # stored, but is it for the platform asked for?
                _check_config_platform(store, chosen, wanted, all_platforms, ref)
            return ImageFetchResult(stored, "unchanged", source, chosen.platforms, Tally(), reused, 0)

        configs = [b for b in missing if any(b == image.config for _, image in chosen.images)]
        got = _download_blobs(client, store, configs, f"{ref} (config)", reporter, jobs)
        platforms_fetched = chosen.platforms
        if single:
            platforms_fetched = _check_config_platform(store, chosen, wanted, all_platforms, ref)
        layers = [b for b in missing if b not in configs]
        got += _download_blobs(client, store, layers, str(ref), reporter, jobs)

        for fetched, _ in chosen.images:
            store.write_blob(fetched.data, fetched.digest)
        store.write_blob(chosen.top.data, chosen.top.digest)
        image = store.tag_image(repository, tag, chosen.descriptor, source=source, platforms=label)
        tally = Tally(len(got), sum(d.size - d.resumed_from for d in got))
        return ImageFetchResult(
            image, action, source, platforms_fetched, tally, reused, sum(d.resumed_from for d in got)
        )


def _choose(client: RegistryClient, ref: ImageRef, wanted: list[Platform], all_platforms: bool) -> _Chosen:
    top = client.manifest(ref.reference)
    parsed = parse_manifest(top.data, top.media_type, top.url)
    descriptor = Descriptor(parsed.media_type, top.digest, len(top.data))
    if isinstance(parsed, ImageManifest):
        return _Chosen(top, descriptor, [(top, parsed)], (), ALL_PLATFORMS)
    offered = tuple(str(m.platform) for m in parsed.manifests if m.platform is not None)
    if all_platforms:
        entries = list(parsed.manifests)
    else:
        entries = []
        for platform in wanted:
            entry = parsed.for_platform(platform)
            if entry is None:
                raise BadInput(
                    f"{ref} has no image for platform {platform} (it has: {', '.join(offered) or 'none named'})",
                    hint="pick one with --platform, or take every one with --all-platforms",
                )
            entries.append(entry)
    images = []
    for entry in dict.fromkeys(entries):
        child = client.manifest(entry.digest)
        if len(child.data) != entry.size:
            raise BadInput(f"{child.url}: {len(child.data)} bytes, but the index {top.digest} says {entry.size}")
        manifest = parse_manifest(child.data, entry.media_type, child.url)
        if not isinstance(manifest, ImageManifest):
            raise BadInput(f"{child.url}: an index inside an index is not supported")
        images.append((child, manifest))
    names = tuple(str(e.platform) for e in dict.fromkeys(entries) if e.platform is not None)
    label = ALL_PLATFORMS if all_platforms or set(offered) <= set(names) else ",".join(sorted(names))
    return _Chosen(top, descriptor, images, names, label, offered)


def _merged_label(stored: str, chosen: _Chosen) -> str:
    """The platforms an index's tag holds after this fetch: what it held and what was fetched now."""
    if ALL_PLATFORMS in (stored, chosen.label):
        return ALL_PLATFORMS
    merged = set(stored.split(",")) | set(chosen.label.split(","))
    return ALL_PLATFORMS if set(chosen.index_platforms) <= merged else ",".join(sorted(merged))


def _covers(stored: str, label: str) -> bool:
    return stored == ALL_PLATFORMS or set(label.split(",")) <= set(stored.split(","))


def _check_config_platform(
    store: ImageStore, chosen: _Chosen, wanted: list[Platform], all_platforms: bool, ref: ImageRef
) -> tuple[str, ...]:
    """A single-platform image must be for a platform that was asked for (its config says which it is)."""
    _, image = chosen.images[0]
    if image.config.media_type not in IMAGE_CONFIGS:
        return ()
    try:
        doc = json.loads(store.read_blob(image.config.digest))
        own = Platform(doc["os"], doc["architecture"], doc.get("variant") or None)
        if not all(isinstance(v, str) for v in (own.os, own.architecture)):
            return ()
    except (ValueError, KeyError, TypeError, AttributeError):
        return ()
    if not all_platforms and not any(p.matches(own) for p in wanted):
        raise BadInput(
            f"{ref} is an image for {own} only, not for {', '.join(map(str, wanted))}",
            hint=f"pass --platform {own} if that is what you want",
        )
    return (str(own),)


class _Stopped(Exception):
    """Another blob failed or the user interrupted: stop this download (its part stays, resumable)."""


class _SharedProgress:
    """One progress bar for the blobs downloading at once; `download()` sees it as its reporter."""

    def __init__(self, reporter: Reporter, advance: Advance, stop: threading.Event):
        self.reporter, self._advance, self.stop = reporter, advance, stop

    def note(self, message: str) -> None:
        self.reporter.note(message)

    @contextmanager
    def transfer(self, description: str, total: int | None, completed: int = 0) -> Iterator[Advance]:
        yield self.advance

    def advance(self, n: int) -> None:
        if self.stop.is_set():
            raise _Stopped
        self._advance(n)


def _download_blobs(
    client: RegistryClient,
    store: ImageStore,
    blobs: list[Descriptor],
    description: str,
    reporter: Reporter,
    jobs: int,
) -> list[Downloaded]:
    """Download and commit `blobs`, `jobs` at a time; the first failure stops the others and is raised.

    The workers are daemon threads, so Ctrl-C ends the command at once: a download that is receiving stops at
    its next chunk (its part flushed, resumable), one that waits for data is left behind when the process exits.
    """
    if not blobs:
        return []
    stop = threading.Event()
    pending = deque(blobs)
    results: list[Downloaded] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def work(progress: _SharedProgress) -> None:
        while not stop.is_set():
            with lock:
                if not pending:
                    return
                blob = pending.popleft()
            try:
                got = _fetch_blob(client, store, blob, progress)
            except _Stopped:
                return
            except BaseException as exc:  # handed to the main thread
                with lock:
                    errors.append(exc)
                stop.set()
                return
            if got is not None:
                with lock:
                    results.append(got)

    with reporter.transfer(description, sum(b.size for b in blobs)) as advance:
        progress = _SharedProgress(reporter, advance, stop)
        workers = [
            threading.Thread(target=work, args=(progress,), name=f"blob-{i}", daemon=True)
            for i in range(max(1, min(jobs, len(blobs))))
        ]
        for worker in workers:
            worker.start()
        try:
            for worker in workers:
                worker.join()
        except BaseException:
            stop.set()
            for worker in workers:
                worker.join(timeout=2)
            raise
    if errors:
        raise errors[0]
    return results


def _fetch_blob(
    client: RegistryClient, store: ImageStore, blob: Descriptor, progress: _SharedProgress
) -> Downloaded | None:
    on_wait = lambda: progress.note(f"waiting for another lab process writing blob {blob.digest}")  # noqa: E731
    with store.staging(blob.digest, on_wait) as part:
        if store.has_blob(blob.digest):  # committed by the process we waited for
            progress.advance(blob.size)
            return None
        url = client.blob_url(blob.digest)
        if _complete_part(part, blob):  # cut between its last byte and its commit: nothing left to ask for
            store.commit_blob(blob.digest, Path(part.name))
            progress.advance(blob.size)
            return Downloaded(blob.size, {"sha256": blob.digest.partition(":")[2]}, blob.size, False)
        got = download(client.http, url, part, ["sha256"], progress, status_error=registry_error, limit=blob.size)
        actual = f"sha256:{got.digests['sha256']}"
        with emptied_if_refused(part):
            if actual != blob.digest or got.size != blob.size:
                raise BadInput(
                    f"blob {blob.digest} from {url} is damaged or tampered with: its sha256 is {actual} "
                    f"({got.size} bytes, the manifest says {blob.size}); refused, nothing stored for it"
                )
        store.commit_blob(blob.digest, Path(part.name))
    return got


def _complete_part(part: BinaryIO, blob: Descriptor) -> bool:
    """Whether the part already is the whole blob; a part that long but not the blob is emptied, as it cannot be
    resumed into it. Asking the registry for the range past the end instead is not safe: Distribution 2.8
    answers it with a 416 whose Content-Length is the blob's, over a shorter body."""
    size = part.seek(0, 2)
    if size < blob.size:
        return False
    if size == blob.size and f"sha256:{file_digests(Path(part.name), ['sha256'])['sha256']}" == blob.digest:
        return True
    part.seek(0)
    part.truncate()
    return False
