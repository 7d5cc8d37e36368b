"""What the mirror's registry answers at each `/v2/` URL, as plain data: the pull side of the OCI Distribution
spec (Docker Registry HTTP API v2), read-only, over the image store. No aiohttp here (`images/http.py` turns an
answer into a response), so a static publisher could share it.

    /v2/                                    the ping: `{}` (clients probe it for the API version and for auth)
    /v2/_catalog[?n=&last=]                 {"repositories": [...]}, a page at a time with a Link to the next
    /v2/<name>/tags/list[?n=&last=]         {"name": <name>, "tags": [...]}, paginated the same way
    /v2/<name>/manifests/<tag|digest>       a stored manifest or index: its bytes as they are (the digest is of them)
    /v2/<name>/blobs/<digest>               a blob an image of <name> needs: manifests, configs, layers

<name> may have several components (coreos/etcd). Each segment of the path is decoded on its own, so an encoded
'/' never makes a new segment; names, tags and digests are checked against the spec's grammar, and a file is
only ever found by a digest (64 hex digits) below `images/blobs`, never by a path of the request.
Refusals are the registry's JSON errors with their codes and statuses (docs/field-notes.md §7).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlencode

from coreos_lab.errors import BadInput
from coreos_lab.mirror.images.manifests import (
    DEFAULT_PLATFORM,
    INDEX_MEDIA_TYPES,
    Descriptor,
    ImageIndex,
    ImageManifest,
    parse_manifest,
    parse_platform,
)
from coreos_lab.mirror.images.reference import COMPONENT, DIGEST_RE, TAG_RE
from coreos_lab.mirror.images.store import ImageStore, StoredImage, sha256_digest

COMPONENT_RE = re.compile(COMPONENT)
MAX_NAME_LENGTH = 255  # the distribution spec's limit on a repository name
ANY_MEDIA_TYPE = ("*/*", "application/*")


# -- answers -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Document:
    """A JSON answer (ping, tags, catalog); `link` is the next page's URL (relative) when there is one."""

    document: dict[str, Any]
    link: str | None = None


@dataclass(frozen=True)
class Manifest:
    """A manifest or index, its stored bytes checked against its digest."""

    data: bytes
    media_type: str
    digest: str
    mtime: float


@dataclass(frozen=True)
class Blob:
    """A committed blob: `path` is resolved and lies below images/blobs, its size the one its descriptor says."""

    path: Path
    digest: str
    size: int
    label: str  # names the transfer: repository@digest (shortened)


@dataclass(frozen=True)
class RegistryError:
    """An error in the registry's format: `{"errors": [{"code", "message", "detail"}]}` with its status."""

    status: int
    code: str
    message: str
    detail: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"errors": [{"code": self.code, "message": self.message, "detail": self.detail}]}


Answer = Document | Manifest | Blob | RegistryError


class _Refused(Exception):
    def __init__(self, error: RegistryError):
        super().__init__(error.message)
        self.error = error


def method_refused(method: str) -> RegistryError:
    """Any write (PUT, POST, PATCH, DELETE) or other method: the mirror is read-only."""
    return RegistryError(
        405,
        "UNSUPPORTED",
        f"{method} is not supported: this registry is a read-only mirror (add images with `lab mirror image`)",
        {"method": method},
    )


def unknown_endpoint(path: str) -> RegistryError:
    return RegistryError(404, "UNSUPPORTED", f"no registry endpoint at {path}", {"path": path})


# -- the mapping -------------------------------------------------------------------------------------------
class Registry:
    def __init__(self, store: ImageStore):
        self.store = store

    def resolve(self, path: str, query: dict[str, str] | None = None, accept: str | None = None) -> Answer:
        """The answer for a GET (or HEAD) of `path` (as sent, percent-encoded, below /v2), with the request's
        query and its Accept header (all Accept values joined with ',', None without one)."""
        query = query or {}
        if path in ("/v2", "/v2/"):
            return Document({})
        segments = [unquote(s) for s in path.removeprefix("/v2/").split("/")] if path.startswith("/v2/") else []
        try:
            match segments:
                case ["_catalog"]:
                    page, link = _page(self.store.repositories(), query, "/v2/_catalog")
                    return Document({"repositories": page}, link)
                case [*name, "tags", "list"] if name:
                    repository, images = self._repository(name)
                    page, link = _page([i.tag for i in images], query, f"/v2/{repository}/tags/list")
                    return Document({"name": repository, "tags": page}, link)
                case [*name, "manifests", reference] if name:
                    repository, images = self._repository(name)
                    return self._manifest(repository, [i.tag for i in images], reference, accept)
                case [*name, "blobs", digest] if name:
                    return self._blob(*self._repository(name), digest)
        except _Refused as refusal:
            return refusal.error
        return unknown_endpoint(path)

    def _repository(self, segments: list[str]) -> tuple[str, list[StoredImage]]:
        """The repository the segments name and its images (the catalog read once per request): NAME_INVALID
        when it cannot be a name, NAME_UNKNOWN when it holds no image."""
        name = "/".join(segments)
        if len(name) > MAX_NAME_LENGTH or not all(COMPONENT_RE.fullmatch(s) for s in segments):
            raise _Refused(
                RegistryError(
                    400,
                    "NAME_INVALID",
                    f"invalid repository name {name!r}: lower-case letters, digits and '.', '_', '-' separators, "
                    "components joined by '/' (e.g. coreos/etcd)",
                    {"name": name},
                )
            )
        images = self.store.images(name)
        if not images:
            raise _Refused(RegistryError(404, "NAME_UNKNOWN", f"no repository {name!r} in this mirror", {"name": name}))
        return name, images

    def _manifest(self, repository: str, tags: list[str], reference: str, accept: str | None) -> Manifest:
        by_digest = ":" in reference
        if by_digest and not DIGEST_RE.fullmatch(reference):
            raise _Refused(_digest_invalid(reference))
        if not by_digest and not TAG_RE.fullmatch(reference):
            raise _Refused(_manifest_unknown(repository, reference, "it is not a valid tag"))
        descriptor = self.store.lookup_manifest(repository, reference)
        if descriptor is None:
            why = "" if by_digest else f"tags: {', '.join(tags)}"
            raise _Refused(_manifest_unknown(repository, reference, why))
        if not by_digest and descriptor.media_type in INDEX_MEDIA_TYPES and not accepts(accept, descriptor.media_type):
            # A client that takes no index gets the default platform's manifest, as Distribution answers a
            # manifest list by tag (docs/field-notes.md §7); by digest only those exact bytes will do.
            descriptor = self._default_platform(repository, reference, descriptor)
        return self._read_manifest(repository, reference, descriptor)

    def _default_platform(self, repository: str, reference: str, index: Descriptor) -> Descriptor:
        parsed = self._parse(repository, reference, index)
        entry = parsed.for_platform(parse_platform(DEFAULT_PLATFORM)) if isinstance(parsed, ImageIndex) else None
        if entry is None or not self.store.has_blob(entry.digest):
            raise _Refused(
                _manifest_unknown(
                    repository,
                    reference,
                    f"it is a multi-platform index, the client accepts no index ({index.media_type}), "
                    f"and this mirror holds no {DEFAULT_PLATFORM} manifest in it",
                )
            )
        return entry

    def _read_manifest(self, repository: str, reference: str, descriptor: Descriptor) -> Manifest:
        path = self.store.blob_path(descriptor.digest)
        try:
            data = path.read_bytes()
            mtime = path.stat().st_mtime
        except OSError:
            raise _Refused(_manifest_unknown(repository, reference, "its blob is missing from the store")) from None
        if sha256_digest(data) != descriptor.digest:
            # Never serve bytes that are not what their digest says (`lab mirror verify` reports the blob).
            raise _Refused(_manifest_unknown(repository, reference, "its blob is damaged in the store"))
        try:
            media_type = parse_manifest(data, descriptor.media_type, f"blob {descriptor.digest}").media_type
        except BadInput as exc:
            raise _Refused(_manifest_unknown(repository, reference, f"it cannot be read: {exc}")) from None
        return Manifest(data, media_type, descriptor.digest, mtime)

    def _parse(self, repository: str, reference: str, descriptor: Descriptor) -> ImageManifest | ImageIndex:
        try:
            return self.store.manifest(descriptor)
        except (OSError, BadInput) as exc:
            raise _Refused(_manifest_unknown(repository, reference, f"it cannot be read: {exc}")) from None

    def _blob(self, repository: str, images: list[StoredImage], digest: str) -> Blob:
        if not DIGEST_RE.fullmatch(digest):
            raise _Refused(_digest_invalid(digest))
        needed = self._needed(images, digest)
        unknown = RegistryError(
            404, "BLOB_UNKNOWN", f"no blob {digest} in {repository} in this mirror", {"digest": digest}
        )
        if needed is None:
            raise _Refused(unknown)
        blobs = (self.store.dir / "blobs").resolve()
        try:
            path = self.store.blob_path(digest).resolve(strict=True)
            size = path.stat().st_size
        except OSError:
            raise _Refused(unknown) from None
        if not path.is_relative_to(blobs) or size != needed.size:
            # A symlink out of the store, or a blob cut short on disk: never served.
            raise _Refused(unknown)
        return Blob(path, digest, size, f"{repository}@{digest[:19]}")

    def _needed(self, images: list[StoredImage], digest: str) -> Descriptor | None:
        """The descriptor of `digest` when one of a repository's `images` needs it: a registry serves a
        repository's own blobs only, though the store keeps each blob once for all."""
        for image in images:
            try:
                needed = self.store.required_blobs(image.descriptor)
            except (OSError, BadInput):
                continue  # a damaged manifest: its image serves nothing (`lab mirror verify` reports it)
            found = next((d for d in needed if d.digest == digest), None)
            if found is not None:
                return found
        return None


def accepts(accept: str | None, media_type: str) -> bool:
    """Whether a client's Accept takes `media_type`; without an Accept header, anything goes."""
    if not accept or not accept.strip():
        return True
    offered = {part.split(";", 1)[0].strip().lower() for part in accept.split(",")}
    return media_type in offered or any(wildcard in offered for wildcard in ANY_MEDIA_TYPE)


def _page(items: list[str], query: dict[str, str], path: str) -> tuple[list[str], str | None]:
    """The spec's pagination: the items (sorted) after `last`, at most `n`, and the next page's URL when more
    remain (for its Link header)."""
    last, count = query.get("last"), query.get("n")
    if last:
        items = [i for i in items if i > last]
    if count is None:
        return items, None
    if not count.isascii() or not count.isdigit():
        raise _Refused(
            RegistryError(
                400, "PAGINATION_NUMBER_INVALID", f"invalid n={count!r}: a number of results, 0 or more", {"n": count}
            )
        )
    page = items[: int(count)]
    more = len(items) > len(page) and page
    return page, f"{path}?{urlencode({'n': int(count), 'last': page[-1]})}" if more else None


def _digest_invalid(digest: str) -> RegistryError:
    return RegistryError(
        400,
        "DIGEST_INVALID",
        f"invalid digest {digest!r}: expected sha256: and 64 lower-case hex digits",
        {"digest": digest},
    )


def _manifest_unknown(repository: str, reference: str, why: str = "") -> RegistryError:
    return RegistryError(
        404,
        "MANIFEST_UNKNOWN",
        f"no manifest {repository}{'@' if ':' in reference else ':'}{reference} in this mirror"
        + (f" ({why})" if why else ""),
        {"name": repository, "reference": reference},
    )
