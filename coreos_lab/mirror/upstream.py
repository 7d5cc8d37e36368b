"""The CoreOS and Flatcar release servers (docs/field-notes.md §2): where a channel's boxes, metadata, digests
and signatures live, how `current` resolves, and small-file downloads from them.

URL scheme. A channel's base URL is the upstream template with `{channel}` filled in, or, when the template
has no `{channel}`, the template followed by `/<channel>`. The default template is the distro's release server
(`coreos_lab.distros`), so `--upstream http://127.0.0.1:8000` reads
`http://127.0.0.1:8000/stable/amd64-usr/<version>/…`. Below a channel base:
`amd64-usr/<version>/<distro>_production_vagrant.{json,box,box.DIGESTS,box.DIGESTS.asc,box.sig}` and
`amd64-usr/current/version.txt`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from coreos_lab import __version__
from coreos_lab.distros import DISTROS, Distro
from coreos_lab.errors import BadInput, LabError
from coreos_lab.urls import is_http_url

if TYPE_CHECKING:
    import requests

BOARD = "amd64-usr"
# Small files (metadata, digests, signatures) are read whole; anything bigger is not what we asked for.
SMALL_FILE_LIMIT = 1 << 20
CONNECT_TIMEOUT = 15.0
READ_TIMEOUT = 60.0


@dataclass(frozen=True)
class ReleaseChannel:
    """One channel of one distro on one release server."""

    distro: Distro
    channel: str
    base: str  # the channel base URL, no trailing slash

    @property
    def box_name(self) -> str:
        return self.distro.box_name(self.channel)

    def file_url(self, version: str, suffix: str) -> str:
        """`suffix` is `.json`, `.box`, `.box.DIGESTS`, …; `version` may be `current`."""
        return self.url_of(version, f"{self.distro.file_stem}{suffix}")

    def url_of(self, version: str, filename: str) -> str:
        """Any file of a version's directory (the QEMU image, its DIGESTS, …)."""
        return f"{self.base}/{BOARD}/{version}/{filename}"

    def version_txt_url(self, version: str = "current") -> str:
        return f"{self.base}/{BOARD}/{version}/version.txt"

    def box_url_for(self, url: str) -> str:
        """The box URL to download, given the one in the JSON. A JSON on a mirror of the release server
        still names the original host (CoreOS's release server is gone since 2020); such a URL is read from
        the mirror instead. URLs on other hosts (Flatcar's bincache) are followed as is."""
        default = channel_base(self.distro, self.channel, None)
        parts = urlsplit(url)
        if self.base == default or parts.hostname != urlsplit(default).hostname:
            return url
        return self.base + urlunsplit(("", "", parts.path, parts.query, ""))


def channel_base(distro: Distro, channel: str, upstream: str | None) -> str:
    template = upstream or distro.release_server
    base = template.replace("{channel}", channel) if "{channel}" in template else f"{template.rstrip('/')}/{channel}"
    return base.rstrip("/")


def release_channel(distro: str, channel: str, upstream: str | None = None) -> ReleaseChannel:
    if distro not in DISTROS:
        raise BadInput(f"unknown --distro {distro!r} (use one of {', '.join(DISTROS)})")
    spec = DISTROS[distro]
    if channel not in spec.channels:
        raise BadInput(f"unknown --channel {channel!r} for {distro} (use one of {', '.join(spec.channels)})")
    if upstream is not None and not is_http_url(upstream):
        raise BadInput(f"--upstream {upstream!r} is not an http(s) URL (e.g. http://mirror.example:8000)")
    return ReleaseChannel(spec, channel, channel_base(spec, channel, upstream))


def parse_version_txt(text: str, variable: str, source: str) -> str:
    """The version from a release's version.txt (`COREOS_VERSION=1235.9.0`, `FLATCAR_VERSION=…`)."""
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == variable:
            version = value.strip().strip("\"'")
            if version:
                return version
    raise BadInput(f"{source}: field {variable} is missing")


def parse_digests(text: str, filename: str, source: str) -> dict[str, str]:
    """Digests of `filename` from a release DIGESTS file: sections `# SHA512 HASH` followed by
    `<hex>  <file>` lines. Returns {algorithm: hex}, algorithms lower-case (md5, sha1, sha512)."""
    found: dict[str, str] = {}
    section: str | None = None
    for line in text.splitlines():
        header = re.fullmatch(r"#\s*(\w+)\s+HASH\s*", line.strip(), re.IGNORECASE)
        if header:
            section = header.group(1).lower()
            continue
        fields = line.split()
        if section and len(fields) == 2 and fields[1].lstrip("*") == filename:
            if not re.fullmatch(r"[0-9a-fA-F]+", fields[0]):
                raise BadInput(f"{source}: {section} of {filename} is not hex: {fields[0]!r}")
            found[section] = fields[0].lower()
    return found


def session() -> requests.Session:
    """An HTTP session that honours the proxy environment (http_proxy, https_proxy, no_proxy) and asks for
    bytes as stored: `Accept-Encoding: identity` keeps sizes, ranges and digests about the same bytes."""
    import requests

    s = requests.Session()
    s.headers.update({"User-Agent": f"coreos-lab/{__version__}", "Accept-Encoding": "identity"})
    return s


def get_small(http: requests.Session, url: str, *, optional: bool = False) -> bytes | None:
    """A small file's bytes. 404 is None when `optional`, else an error naming the URL."""
    import requests
    import urllib3

    try:
        with http.get(url, stream=True, timeout=(CONNECT_TIMEOUT, READ_TIMEOUT)) as resp:
            if resp.status_code == 404 and optional:
                return None
            if resp.status_code != 200:
                raise http_error(url, resp.status_code, resp.reason)
            data = resp.raw.read(SMALL_FILE_LIMIT + 1, decode_content=False)
    except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:  # raw reads raise urllib3's own
        raise network_error(url, exc) from exc
    if len(data) > SMALL_FILE_LIMIT:
        raise LabError(f"{url}: more than {SMALL_FILE_LIMIT} bytes; not a metadata file")
    return data


def http_error(url: str, status: int, reason: str | None) -> LabError:
    if status == 404:
        return BadInput(f"{url}: not found (HTTP 404)", hint="check --distro, --channel, --version and --upstream")
    return LabError(f"{url}: HTTP {status} {reason or ''}".rstrip())


def network_error(url: str, exc: Exception) -> LabError:
    return LabError(f"cannot download {url}: {exc}", hint="check the network, the proxy settings and --upstream")
