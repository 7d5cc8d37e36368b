"""What the mirror answers at each URL, as plain data: `lab mirror serve` without a server.

URL scheme (the store's layout; the box's URL path below the base URL is its path below the root):

    /                                                   index: boxes and images, with copy-paste `vagrant box add`
                                                        and `docker pull` commands
    /<name>, /<name>.json                               metadata: every stored version and provider of <name>
    /<name>/<version>/<provider>-<arch>.box             the box (only catalog entries; never .part or records)
    /<org>/<name>, /<org>/<name>.json, /<org>/<name>/<version>/<provider>-<arch>.box
                                                        the same for a Vagrant Cloud-style name `<org>/<name>`
    /<distro>_production_vagrant.json                   seed-style: newest <distro>-stable (or the only channel)
    /<channel>/<distro>_production_vagrant.json         seed-style: newest <distro>-<channel>
    /<channel>/amd64-usr/<version|current>/<distro>_production_vagrant.json
                                                        the release servers' layout, so an existing URL works
                                                        with only its scheme and host replaced
    /<distro>/<channel>/amd64-usr/<version|current>/{version.txt, <distro>_production_vagrant.{json,box,
        box.DIGESTS,box.DIGESTS.asc,box.sig}}           a release server for another mirror's
                                                        `lab mirror fetch --upstream <base>/<distro>`

`MirrorLayout.resolve` maps a request path to an answer (a metadata document, a stored file, a text, the index
page, or a refusal with its text); `MirrorLayout.paths` lists every path it answers with content, so the
catalog can also be written out as files. Metadata `url`s are absolute, under the base URL the caller gives.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from coreos_lab.distros import DISTROS, Distro
from coreos_lab.mirror.images.store import ImageStore, StoredImage
from coreos_lab.mirror.store import BOX, CatalogEntry, MirrorStore, version_key
from coreos_lab.mirror.upstream import BOARD

# What each segment of a path may be (matched whole, with fullmatch).
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
CHANNEL_RE = re.compile(r"[a-z][a-z0-9-]*")
BOX_VERSION_RE = re.compile(r"[0-9][0-9A-Za-z.-]*")
RELEASE_RE = re.compile(r"[0-9A-Za-z.-]+")  # a version, or `current`
DEFAULT_CHANNEL = "stable"
UPSTREAM_PROVIDER = "virtualbox"  # the release servers publish the VirtualBox box as <distro>_production_vagrant.box
SIDE_FILES = (".box.DIGESTS", ".box.DIGESTS.asc", ".box.sig")  # kept from upstream by `lab mirror fetch`


# -- answers -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Metadata:
    """A Vagrant box metadata document, served as JSON: how Vagrant tells it from a box (docs/field-notes.md §1)."""

    document: dict[str, Any]


@dataclass(frozen=True)
class StoredFile:
    """A file of the store, sent as it is: `path` is resolved and lies inside the mirror root."""

    path: Path
    label: str  # its path below the root, naming the transfer


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Page:
    html: str


@dataclass(frozen=True)
class NotFound:
    text: str


@dataclass(frozen=True)
class Forbidden:
    text: str


Answer = Metadata | StoredFile | Text | Page | NotFound | Forbidden

# A path of none of the shapes above; the text is the one aiohttp answers for a path no route matches.
NO_SUCH_PATH = NotFound("404: Not Found")


class _Refused(Exception):
    def __init__(self, answer: NotFound | Forbidden):
        super().__init__(answer.text)
        self.answer = answer


def _missing(text: str) -> _Refused:
    return _Refused(NotFound(text + "\n"))


def file_missing(label: str) -> NotFound:
    """A catalog file gone from the disk (removed by hand, or between listing and opening it)."""
    return NotFound(f"file missing: /{label}\n")


# -- the mapping -------------------------------------------------------------------------------------------
class MirrorLayout:
    def __init__(self, store: MirrorStore):
        self.store = store

    def resolve(self, path: str, base: str) -> Answer:
        """The answer for `path` (as sent, percent-encoded; no query), metadata URLs under `base`.

        Each segment is decoded on its own, so an encoded '/' never makes a new segment. Nothing of a path is
        ever joined to a file name: files are found by comparing segments with what the catalog holds.
        """
        if path == "/":
            return Page(render_index(self.store.entries(kind=BOX), base, ImageStore(self.store.root).images()))
        segments = [unquote(s) for s in path.split("/")[1:]]
        try:
            match segments:
                case [name] if NAME_RE.fullmatch(name):
                    return self._metadata(name, base)
                case [channel, seed] if CHANNEL_RE.fullmatch(channel) and _seed_distro(seed):
                    return self._seed(_seed_distro(seed), channel, None, base)
                case [channel, board, release, seed] if (
                    CHANNEL_RE.fullmatch(channel)
                    and board == BOARD
                    and RELEASE_RE.fullmatch(release)
                    and _seed_distro(seed)
                ):
                    return self._seed(_seed_distro(seed), channel, None if release == "current" else release, base)
                case [org, name] if NAME_RE.fullmatch(org) and NAME_RE.fullmatch(name):
                    return self._metadata(f"{org}/{name}", base)
                case [name, version, file] if NAME_RE.fullmatch(name) and BOX_VERSION_RE.fullmatch(version) and file:
                    return self._box(name, version, file)
                case [org, name, version, file] if (
                    NAME_RE.fullmatch(org) and NAME_RE.fullmatch(name) and BOX_VERSION_RE.fullmatch(version) and file
                ):
                    return self._box(f"{org}/{name}", version, file)
                case [distro, channel, board, release, file] if (
                    distro in DISTROS
                    and CHANNEL_RE.fullmatch(channel)
                    and board == BOARD
                    and RELEASE_RE.fullmatch(release)
                    and file
                ):
                    return self._release_file(distro, channel, release, file, base)
        except _Refused as refusal:
            return refusal.answer
        return NO_SUCH_PATH

    def paths(self) -> list[str]:
        """Every path `resolve` answers with content (not a refusal), in a stable order."""
        boxes = self.store.entries(kind=BOX)
        names = sorted({e.name for e in boxes})
        found = [
            "/",
            *(p for name in names for p in (f"/{name}", f"/{name}.json")),
            *(f"/{e.key.relpath}" for e in boxes),
        ]
        for distro in DISTROS.values():
            seed = f"{distro.file_stem}.json"
            channels = {n.split("-", 1)[1]: n for n in names if n.startswith(f"{distro.name}-") and "/" not in n}
            if DEFAULT_CHANNEL in channels or len(channels) == 1:
                found.append(f"/{seed}")
            for channel, name in channels.items():
                if not CHANNEL_RE.fullmatch(channel):
                    continue
                of_name = [e for e in boxes if e.name == name]
                versions = ["current", *dict.fromkeys(e.version for e in of_name)]
                found += [f"/{channel}/{seed}", *(f"/{channel}/{BOARD}/{v}/{seed}" for v in versions)]
                found += self._release_paths(
                    distro, channel, [e for e in of_name if e.key.provider == UPSTREAM_PROVIDER]
                )
        return list(dict.fromkeys(found))

    def _release_paths(self, distro: Distro, channel: str, upstream: list[CatalogEntry]) -> list[str]:
        """The release layout's paths of one channel: for `current` and each version of its VirtualBox boxes."""
        found = []
        for version in ["current", *(e.version for e in upstream)] if upstream else []:
            entry = upstream[-1] if version == "current" else next(e for e in upstream if e.version == version)
            kept = self.store.upstream_dir(entry.name, entry.version)
            files = ["version.txt", f"{distro.file_stem}.json", f"{distro.file_stem}.box"]
            files += [f"{distro.file_stem}{s}" for s in SIDE_FILES if (kept / f"{distro.file_stem}{s}").is_file()]
            found += [f"/{distro.name}/{channel}/{BOARD}/{version}/{file}" for file in files]
        return found

    # -- metadata ----------------------------------------------------------------------------------------
    def _metadata(self, requested: str, base: str) -> Metadata:
        names = [requested]
        if requested.endswith(".json"):
            names.append(requested.removesuffix(".json"))
        for name in names:
            doc = self.store.vagrant_metadata(name, base)
            if doc is not None:
                return Metadata(doc)
        distro = _seed_distro(requested)
        if distro:
            return self._seed(distro, None, None, base)
        raise _missing(f"no box named {names[-1]!r} in this mirror (see {base}/)")

    def _seed(self, distro: str, channel: str | None, release: str | None, base: str) -> Metadata:
        """Upstream's per-release JSON, answered from the store: one version (the newest, or `release`)."""
        name = f"{distro}-{channel}" if channel else self._default_channel_name(distro, base)
        doc = self.store.vagrant_metadata(name, base)
        if doc is None:
            raise _missing(f"no box named {name!r} in this mirror (see {base}/)")
        versions = doc["versions"]
        if release is None:
            chosen = max(versions, key=lambda v: version_key(v["version"]))
        else:
            matching = [v for v in versions if v["version"] == release]
            if not matching:
                stored = ", ".join(v["version"] for v in versions)
                raise _missing(f"{name} has no version {release!r} in this mirror (stored: {stored})")
            chosen = matching[0]
        return Metadata(doc | {"versions": [chosen]})

    def _default_channel_name(self, distro: str, base: str) -> str:
        """`<distro>-stable` when stored, else the only stored `<distro>-*` channel; else a 404 naming them."""
        names = [n for n in self.store.names(BOX) if n.startswith(f"{distro}-") and "/" not in n]
        preferred = f"{distro}-{DEFAULT_CHANNEL}"
        if preferred in names or not names:
            return preferred
        if len(names) == 1:
            return names[0]
        seed = f"{DISTROS[distro].file_stem}.json"
        choices = " ".join(f"{base}/{n.split('-', 1)[1]}/{seed}" for n in names)
        raise _missing(f"no {preferred} in this mirror; pick a channel: {choices}")

    # -- files -------------------------------------------------------------------------------------------
    def _box(self, name: str, version: str, file: str) -> StoredFile:
        for entry in self.store.entries(name, kind=BOX):
            if entry.version == version and file == f"{entry.key.stem}.box":
                return self._file(self.store.artifact_path(entry.key), entry.key.relpath)
        raise _missing(f"no box at /{name}/{version}/{file} in this mirror")

    def _release_file(self, distro: str, channel: str, release: str, file: str, base: str) -> Answer:
        """`/<distro>/<channel>/amd64-usr/<version|current>/<file>`: what `lab mirror fetch --upstream
        <this>/<distro>` reads. The box, version.txt and the JSON (rewritten to this server) always; DIGESTS
        and signatures when the box was fetched from a release server (kept as they came, so a downstream
        fetch checks the same sha512 and signatures against the same bytes)."""
        name = f"{distro}-{channel}"
        entries = [e for e in self.store.entries(name, kind=BOX) if e.key.provider == UPSTREAM_PROVIDER]
        if release != "current":
            entries = [e for e in entries if e.version == release]
        if not entries:
            raise _missing(f"no {UPSTREAM_PROVIDER} box {name} {release} in this mirror")
        entry = entries[-1]
        spec = DISTROS[distro]
        stem = spec.file_stem
        if file == "version.txt":
            variable = spec.version_variable
            return Text(f"{variable}={entry.version}\n{variable}_ID={entry.version}\n")
        if file == f"{stem}.json":
            return self._seed(distro, channel, entry.version, base)
        if file == f"{stem}.box":
            return self._file(self.store.artifact_path(entry.key), entry.key.relpath)
        if file in (f"{stem}{suffix}" for suffix in SIDE_FILES):
            side = self.store.upstream_dir(entry.name, entry.version) / file
            if side.is_file():
                return self._file(side, f"{entry.name}/{entry.version}/upstream/{file}")
            raise _missing(f"{name} {entry.version} was not fetched from a release server: no {file}")
        raise _missing(f"no {file} in the release layout (version.txt, {stem}.json, .box, .box.DIGESTS, …)")

    def _file(self, path: Path, label: str) -> StoredFile:
        try:
            resolved = path.resolve(strict=True)
        except OSError as exc:
            raise _Refused(file_missing(label)) from exc
        if not resolved.is_relative_to(self.store.root.resolve()):
            # A symlink in the store pointing elsewhere: never follow it out of the root.
            raise _Refused(Forbidden("forbidden: the file lies outside the mirror root\n"))
        return StoredFile(resolved, label)


def _seed_distro(file: str) -> str:
    """`coreos` for `coreos_production_vagrant.json` (the release servers' JSON name), else ''."""
    for distro in DISTROS.values():
        if file == f"{distro.file_stem}.json":
            return distro.name
    return ""


# -- index page --------------------------------------------------------------------------------------------
def render_index(entries: list[CatalogEntry], base: str, images: list[StoredImage] | None = None) -> str:
    e = html.escape
    by_name: dict[str, list[CatalogEntry]] = {}
    for entry in entries:
        by_name.setdefault(entry.name, []).append(entry)
    sections = []
    for name, boxes in by_name.items():
        url = f"{base}/{name}"
        newest = boxes[-1].version
        rows = "".join(
            f"<tr><td>{e(b.version)}</td><td>{e(b.key.provider)}</td><td>{e(b.key.architecture)}</td>"
            f"<td>{b.size:,}</td><td><code>{e(b.sha256[:16])}…</code></td>"
            f'<td><a href="{e(b.url(base))}">box</a></td></tr>'
            for b in reversed(boxes)
        )
        sections.append(
            f"<h2>{e(name)}</h2>\n"
            f"<pre>vagrant box add {e(url)}\n"
            f"vagrant box add --box-version {e(newest)} {e(url)}</pre>\n"
            f'<p>In a Vagrantfile: <code>config.vm.box = "{e(name)}"</code> and '
            f'<code>config.vm.box_url = "{e(url)}"</code> · <a href="{e(url)}.json">metadata</a></p>\n'
            "<table><tr><th>version</th><th>provider</th><th>arch</th><th>bytes</th><th>sha256</th><th></th></tr>"
            f"{rows}</table>"
        )
    if not sections:
        sections.append("<p>No boxes yet: add some with <code>lab mirror import</code>.</p>")
    if images:
        # The registry answers at the server's root (/v2/), so a pull names the host and port alone.
        registry = urlsplit(base).netloc
        rows = "".join(
            f"<tr><td><code>docker pull {e(registry)}/{e(i.name)}</code></td><td>{e(i.platforms)}</td>"
            f"<td><code>{e(i.digest[:23])}…</code></td></tr>"
            for i in images
        )
        sections.append(
            "<h2>Images</h2>\n<table><tr><th>pull</th><th>platforms</th><th>digest</th></tr>" + rows + "</table>"
        )
    body = "\n".join(sections)
    return (
        '<!doctype html>\n<html><head><meta charset="utf-8"><title>coreos-lab box mirror</title>\n'
        "<style>body{font-family:sans-serif;margin:2em}pre,code{background:#f4f4f4}pre{padding:.5em}"
        "td,th{padding:.2em .8em;text-align:left}</style></head>\n"
        f"<body><h1>coreos-lab box mirror</h1>\n<p>Base URL: <code>{e(base)}</code></p>\n{body}\n</body></html>\n"
    )
