"""The mirror's registry over HTTP (aiohttp): what `registry` answers for a `/v2/` path, turned into a response.

Blobs go out as box files do (`mirror.http.BoxFileResponse`: sendfile in pieces the live view and the access log
follow, one Range, conditional requests), with the digest as their ETag. Manifests are small: their stored bytes
go out from memory. Every answer carries `Docker-Distribution-API-Version: registry/2.0`, which clients look for
on the ping (docs/field-notes.md §7).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web

from coreos_lab.mirror.http import ANSWERED_METHODS, BoxFileResponse, open_file, precondition_status
from coreos_lab.mirror.images.registry import (
    Blob,
    Document,
    Manifest,
    Registry,
    RegistryError,
    method_refused,
)
from coreos_lab.mirror.images.store import ImageStore
from coreos_lab.mirror.transfers import TransferTracker

API_VERSION = {"Docker-Distribution-API-Version": "registry/2.0"}


def setup(app: web.Application, mirror_root: Path, *, tracker: TransferTracker) -> None:
    """Add the registry's routes to `app`: `/v2` and everything below it (before the mirror's catch-all)."""
    handlers = RegistryHandlers(Registry(ImageStore(mirror_root)), tracker=tracker)
    app.router.add_route("*", "/v2", handlers.handle)
    app.router.add_route("*", r"/v2/{tail:[\s\S]*}", handlers.handle)  # also a decoded newline


class RegistryHandlers:
    def __init__(self, registry: Registry, *, tracker: TransferTracker):
        self.registry = registry
        self.tracker = tracker

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.method not in ANSWERED_METHODS:
            return error_response(method_refused(request.method))
        accept = ",".join(request.headers.getall("Accept", [])) or None
        query = {key: request.query[key] for key in request.query}
        # Off the event loop: it reads the catalog and manifests and hashes them.
        answer = await asyncio.to_thread(self.registry.resolve, request.rel_url.raw_path, query, accept)
        match answer:
            case Document(document, link):
                response = web.json_response(document, headers=API_VERSION)
                if link:
                    response.headers["Link"] = f'<{link}>; rel="next"'
                return response
            case Manifest():
                return manifest_response(request, answer)
            case Blob():
                return await self.send_blob(request, answer)
            case RegistryError():
                return error_response(answer)

    async def send_blob(self, request: web.Request, blob: Blob) -> web.StreamResponse:
        try:
            handle, stat = await asyncio.to_thread(open_file, blob.path)
        except OSError:
            return error_response(RegistryError(404, "BLOB_UNKNOWN", f"blob {blob.digest} is gone from the store"))
        response = BoxFileResponse(tracker=self.tracker, label=blob.label, etag=blob.digest)
        response.headers.update(API_VERSION)
        response.headers["Docker-Content-Digest"] = blob.digest
        try:
            await response.send(request, handle, stat)
        finally:
            handle.close()
        return response


def manifest_response(request: web.Request, manifest: Manifest) -> web.Response:
    """The stored bytes, never re-serialised; the ETag is the digest, as Distribution writes it."""
    headers = {**API_VERSION, "Docker-Content-Digest": manifest.digest}
    status = precondition_status(request, manifest.digest, manifest.mtime)
    if status is not None:
        response = web.Response(status=status, headers=headers)
    else:
        response = web.Response(body=manifest.data, content_type=manifest.media_type, headers=headers)
    response.etag = manifest.digest
    return response


def error_response(error: RegistryError) -> web.Response:
    """The registry's JSON error; aiohttp sends a HEAD's headers only."""
    response = web.json_response(error.as_json(), status=error.status, headers=API_VERSION)
    if error.status == web.HTTPMethodNotAllowed.status_code:
        response.headers["Allow"] = ", ".join(ANSWERED_METHODS)
    return response
