"""A fixture upstream on 127.0.0.1 laid out like the CoreOS and Flatcar release servers (docs/field-notes.md §2).

Two servers: the release host (`/<channel>/amd64-usr/<version>/…`, `current/`, version.txt, JSON, DIGESTS,
signatures) and a separate "bincache" host where Flatcar's JSON points its box URL. Each server can cut a
download mid-way, hold it mid-way until released, ignore Range, throttle, act as a forward proxy for the others,
and records every request with its headers. Signatures are made with a throwaway gpg key in a temporary GNUPGHOME.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from harness.boxes import make_box

BOARD = "amd64-usr"


@dataclass
class SeenRequest:
    method: str
    target: str  # as sent: a path, or an absolute URL when the client used this server as a proxy
    headers: dict[str, str]

    @property
    def path(self) -> str:
        return urlsplit(self.target).path


class FixtureServer:
    """Serves `files` (URL path → bytes) over HTTP/1.1 with single-range support, on 127.0.0.1:<free port>."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[SeenRequest] = []
        self.cut_after: dict[str, int] = {}  # path → body bytes to send before dropping the connection, once
        self.ignore_range = False
        self.misplace_ranges = False  # answer a Range with 206 but the whole file (Content-Range from byte 0)
        self.throttle: tuple[int, float] | None = None  # (chunk size, seconds between chunks)
        # path → body bytes to send before holding the rest back until `release` is set: a download in progress
        # for as long as the test needs, however slow the machine.
        self.hold_after: dict[str, int] = {}
        self.release = threading.Event()
        self.proxied: dict[str, FixtureServer] = {}  # netloc → server, when used as a forward proxy
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.fixture = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="fixture-upstream", daemon=True)
        self._thread.start()

    @property
    def netloc(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"{host}:{port}"

    @property
    def url(self) -> str:
        return f"http://{self.netloc}"

    def seen(self, path_suffix: str, method: str = "GET") -> list[SeenRequest]:
        return [r for r in self.requests if r.method == method and r.path.endswith(path_suffix)]

    def close(self) -> None:
        self.release.set()  # no handler stays held
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        server: FixtureServer = self.server.fixture  # type: ignore[attr-defined]
        seen = SeenRequest(self.command, self.path, dict(self.headers.items()))
        server.requests.append(seen)
        if self.path.startswith("http://"):  # forward-proxy request: serve from the named fixture server
            target = server.proxied.get(urlsplit(self.path).netloc)
            if target is None:
                return self._status(502, "not a fixture host")
            target.requests.append(seen)
            server = target
        path = urlsplit(self.path).path
        data = server.files.get(path)
        if data is None:
            return self._status(404, "not found")
        size, start, end = len(data), 0, len(data) - 1
        status = 200
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if match and not server.ignore_range:
            start = int(match.group(1))
            end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
            if server.misplace_ranges:
                start, end = 0, size - 1
        payload = data[start : end + 1]
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if path.endswith(".json") else "application/octet-stream")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Accept-Ranges", "none" if server.ignore_range else "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if not body:
            return
        cut = server.cut_after.pop(path, None)
        if cut is not None:
            payload = payload[:cut]
            self.close_connection = True
        held = server.hold_after.get(path)
        if held is not None and held < len(payload):
            self.wfile.write(payload[:held])
            self.wfile.flush()
            server.release.wait()
            payload = payload[held:]
        chunk, pause = server.throttle or (len(payload) or 1, 0.0)
        for offset in range(0, len(payload), chunk):
            self.wfile.write(payload[offset : offset + chunk])
            self.wfile.flush()
            if pause:
                time.sleep(pause)

    def _status(self, code: int, text: str) -> None:
        raw = text.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(raw)


class SigningKeys:
    """Two throwaway OpenPGP keys in a temporary GNUPGHOME: `release` (its public key is in `keyring`) and
    `stranger` (not in the keyring). `close()` stops the gpg-agent gpg started for this home."""

    def __init__(self, home: Path):
        self.home = home
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.release = self._generate("coreos-lab release test key <release@example.invalid>")
        self.stranger = self._generate("coreos-lab stranger test key <stranger@example.invalid>")
        self.keyring = home / "release-public.asc"
        self.keyring.write_bytes(self._gpg("--armor", "--export", self.release))

    def _gpg(self, *args: str, input: bytes | None = None) -> bytes:
        argv = ["gpg", "--homedir", str(self.home), "--batch", "--no-tty", "--pinentry-mode", "loopback"]
        return subprocess.run([*argv, "--passphrase", "", *args], input=input, capture_output=True, check=True).stdout

    def _generate(self, uid: str) -> str:
        self._gpg("--quick-gen-key", uid, "ed25519", "sign", "never")
        listing = self._gpg("--with-colons", "--list-keys", uid).decode()
        return next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))

    def clearsign(self, data: bytes, key: str | None = None) -> bytes:
        return self._gpg("--local-user", key or self.release, "--clearsign", input=data)

    def detach_sign(self, data: bytes, key: str | None = None, *, armor: bool = False) -> bytes:
        armored = ["--armor"] if armor else []
        return self._gpg("--local-user", key or self.release, *armored, "--detach-sign", input=data)

    def close(self) -> None:
        subprocess.run(
            ["gpgconf", "--homedir", str(self.home), "--kill", "gpg-agent"], capture_output=True, check=False
        )


@dataclass
class Release:
    """What `publish` put where."""

    distro: str
    channel: str
    version: str
    box: bytes
    dir_path: str  # release-server directory of the version, e.g. /stable/amd64-usr/3815.2.0
    box_path: str  # path of the box on the server that holds it
    box_server: FixtureServer
    files: dict[str, bytes] = field(default_factory=dict)  # release-server path → bytes

    @property
    def stem(self) -> str:
        return f"{self.distro}_production_vagrant"

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.box).hexdigest()

    def path(self, suffix: str) -> str:
        return f"{self.dir_path}/{self.stem}{suffix}"


class ReleaseUpstream:
    """A release host and a bincache host; `publish` lays out one release like the real servers."""

    def __init__(self, keys: SigningKeys | None = None):
        self.keys = keys
        self.release = FixtureServer()
        self.bincache = FixtureServer()

    @property
    def url(self) -> str:
        """What `--upstream` takes: the channel directories live right below it."""
        return self.release.url

    def publish(
        self,
        distro: str,
        channel: str,
        version: str,
        *,
        provider: str = "virtualbox",
        current: bool = True,
        signed: bool = True,
        box: bytes | None = None,
        box_url: str | None = None,
        json_override: bytes | None = None,
        metadata_edit: dict[str, object] | None = None,
        provider_edit: dict[str, object] | None = None,
    ) -> Release:
        """Publish `<distro>_production_vagrant.*` for `version`. CoreOS keeps its box on the release host;
        Flatcar's JSON points at the bincache host. The edits change the JSON to make bad upstreams."""
        box = box if box is not None else make_box(f"{distro}-{channel}", version, provider)
        stem = f"{distro}_production_vagrant"
        dir_path = f"/{channel}/{BOARD}/{version}"
        if distro == "flatcar":
            box_path, box_server = f"/images/amd64/{version}/{stem}.box", self.bincache
        else:
            box_path, box_server = f"{dir_path}/{stem}.box", self.release
        box_server.files[box_path] = box
        prov: dict[str, object] = {
            "name": provider,
            "url": box_url or f"{box_server.url}{box_path}",
            "checksum_type": "sha256",
            "checksum": hashlib.sha256(box).hexdigest(),
        }
        if distro == "flatcar":
            prov["architecture"] = "amd64"
        prov.update(provider_edit or {})
        doc: dict[str, object] = {
            "name": f"{distro}-{channel}",
            "description": f"{distro.capitalize()} {channel} {version}",
            "versions": [{"version": version, "providers": [prov]}],
        }
        doc.update(metadata_edit or {})
        digests = (
            f"# MD5 HASH\n{hashlib.md5(box).hexdigest()}  {stem}.box\n"
            f"# SHA1 HASH\n{hashlib.sha1(box).hexdigest()}  {stem}.box\n"
            f"# SHA512 HASH\n{hashlib.sha512(box).hexdigest()}  {stem}.box\n"
        ).encode()
        release = Release(distro, channel, version, box, dir_path, box_path, box_server)
        var = f"{distro.upper()}_VERSION"
        files = {
            f"{stem}.json": json_override if json_override is not None else json.dumps(doc, indent=2).encode(),
            f"{stem}.box.DIGESTS": digests,
            "version.txt": f"{var}={version}\n{var}_ID={version}\n{distro.upper()}_BUILD={version.split('.')[0]}\n".encode(),
        }
        if signed and self.keys is not None:
            files[f"{stem}.box.DIGESTS.asc"] = self.keys.clearsign(digests)
            files[f"{stem}.box.sig"] = self.keys.detach_sign(box)
        for name, data in files.items():
            release.files[f"{dir_path}/{name}"] = data
            self.release.files[f"{dir_path}/{name}"] = data
            if current:
                self.release.files[f"/{channel}/{BOARD}/current/{name}"] = data
        return release

    def publish_qemu_image(
        self, distro: str, channel: str, version: str, image: bytes, *, current: bool = True, signed: bool = True
    ) -> Release:
        """Publish `<distro>_production_qemu_image.img` for `version` as Flatcar's release server does: the image
        (qcow2) on the release host beside `….img.DIGESTS` (md5, sha1, sha512), the clearsigned `….DIGESTS.asc`
        and the image's detached `….img.sig`; version.txt too."""
        name = f"{distro}_production_qemu_image.img"
        dir_path = f"/{channel}/{BOARD}/{version}"
        digests = (
            f"# MD5 HASH\n{hashlib.md5(image).hexdigest()}  {name}\n"
            f"# SHA1 HASH\n{hashlib.sha1(image).hexdigest()}  {name}\n"
            f"# SHA512 HASH\n{hashlib.sha512(image).hexdigest()}  {name}\n"
        ).encode()
        var = f"{distro.upper()}_VERSION"
        files = {
            name: image,
            f"{name}.DIGESTS": digests,
            "version.txt": f"{var}={version}\n{var}_ID={version}\n".encode(),
        }
        if signed and self.keys is not None:
            files[f"{name}.DIGESTS.asc"] = self.keys.clearsign(digests)
            files[f"{name}.sig"] = self.keys.detach_sign(image)
        release = Release(distro, channel, version, image, dir_path, f"{dir_path}/{name}", self.release)
        for file, data in files.items():
            release.files[f"{dir_path}/{file}"] = data
            self.release.files[f"{dir_path}/{file}"] = data
            if current:
                self.release.files[f"/{channel}/{BOARD}/current/{file}"] = data
        return release

    def close(self) -> None:
        self.release.close()
        self.bincache.close()


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SigningKeys]:
    """One pair of throwaway keys for the whole run: generating them is the slow part."""
    signing = SigningKeys(tmp_path_factory.mktemp("gnupg"))
    try:
        yield signing
    finally:
        signing.close()


@pytest.fixture
def upstream(keys: SigningKeys) -> Iterator[ReleaseUpstream]:
    """A fresh release host and bincache signing with `keys`; closed after the test."""
    up = ReleaseUpstream(keys)
    try:
        yield up
    finally:
        up.close()
