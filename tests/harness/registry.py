"""A real upstream registry for the image tests: Debian's `docker-registry` (the Distribution registry, the
reference implementation of the OCI Distribution API), started on 127.0.0.1 with its storage in a directory
of the test's, and stopped by PID.

Authentication, as upstream registries do it:
  - `htpasswd=`: Basic auth against an htpasswd file (the registry accepts bcrypt entries only; written with
    Python's bcrypt, which paramiko already brings);
  - `token=`: the Bearer token flow. The registry's own `auth: token` checks JWTs signed by a key whose
    certificate is in its `rootcertbundle`; `TokenServer` is the small token service on 127.0.0.1 that
    issues them (RS256, the certificate in the `x5c` header), anonymously or for Basic credentials, and
    records what it was asked (service, scope).
`RegistryProxy` stands in front of a registry to cut, hold or redirect blob downloads, and `BlobStorage` is
the storage host such a redirect leads to.
"""

from __future__ import annotations

import base64
import datetime
import http.client
import json
import os
import re
import secrets
import socket
import subprocess
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests

from harness import processes
from harness.oci_images import MULTI, SINGLE, BuiltImages, seed
from harness.ports import free_port
from harness.waiting import wait_until

SERVICE = "coreos-lab-test-registry"
ISSUER = "coreos-lab-test-issuer"


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str

    @property
    def creds(self) -> str:
        """skopeo's `--creds` form."""
        return f"{self.username}:{self.password}"


def write_htpasswd(path: Path, users: dict[str, str]) -> None:
    import bcrypt

    lines = [f"{user}:{bcrypt.hashpw(pw.encode(), bcrypt.gensalt(rounds=5)).decode()}" for user, pw in users.items()]
    path.write_text("\n".join(lines) + "\n")


def self_signed_certificate(common_name: str, ip: str | None = None) -> tuple[Any, Any]:
    """An RSA key and a self-signed CA certificate for it (with `ip` as its subject alternative name)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    )
    if ip is not None:
        alt = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))])
        builder = builder.add_extension(alt, critical=False)
    return key, builder.sign(key, hashes.SHA256())


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """A Docker token service: `GET /token?service=S&scope=repository:NAME:pull` → `{"token": JWT}`.

    With `users`, only those Basic credentials get a token (others a 401); without, anyone does. Tokens live
    `lifetime` seconds; the first `expired_first` are issued expired, which the registry answers with a 401 as it
    does when a token runs out in the middle of a long fetch."""

    def __init__(
        self, directory: Path, users: dict[str, str] | None = None, lifetime: int = 300, expired_first: int = 0
    ):
        from cryptography.hazmat.primitives import serialization

        self.users = users
        self.lifetime = lifetime
        self.expired_first = expired_first  # the first N tokens expired an hour ago (a renewal is due at once)
        self.requests: list[dict[str, str | None]] = []
        self._key, cert = self_signed_certificate(ISSUER)
        self.cert_path = directory / "token-cert.pem"
        self.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self._cert_der = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/token"
        self._server: ThreadingHTTPServer | None = None

    def issue(self, subject: str, scope: str | None) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        access = []
        if scope:
            kind, name, actions = scope.split(":", 2)
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        if self.expired_first > 0:
            self.expired_first -= 1
            now -= 3600 + self.lifetime  # beyond the registry's leeway for clock skew
        claims = {
            "iss": ISSUER,
            "sub": subject,
            "aud": SERVICE,
            "iat": now - 5,
            "nbf": now - 5,
            "exp": now + self.lifetime,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self._cert_der]}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(signature)}"

    def __enter__(self) -> TokenServer:
        tokens = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
                authorization = self.headers.get("Authorization")
                tokens.requests.append(
                    {"service": query.get("service"), "scope": query.get("scope"), "authorization": authorization}
                )
                subject = "anonymous"
                if tokens.users is not None:
                    user = _basic_user(authorization, tokens.users)
                    if user is None:
                        self.send_response(401)
                        self.send_header("WWW-Authenticate", 'Basic realm="token"')
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    subject = user
                body = json.dumps({"token": tokens.issue(subject, query.get("scope")), "expires_in": tokens.lifetime})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def _basic_user(authorization: str | None, users: dict[str, str]) -> str | None:
    if not authorization or not authorization.startswith("Basic "):
        return None
    user, _, password = base64.b64decode(authorization[6:]).decode().partition(":")
    return user if users.get(user) == password else None


@dataclass
class Registry:
    """A running docker-registry; `host` is `127.0.0.1:PORT`, what image references name."""

    directory: Path
    port: int
    process: subprocess.Popen[bytes]
    credentials: Credentials | None = None
    token_server: TokenServer | None = None
    log_path: Path = field(default_factory=Path)
    tls: bool = False

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    @property
    def storage(self) -> Path:
        return self.directory / "storage"

    def blob_data(self, digest: str) -> Path:
        """Where the filesystem driver keeps a blob's bytes (distribution's path spec)."""
        hexdigest = digest.removeprefix("sha256:")
        return self.storage / "docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest / "data"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.is_file() else ""


@contextmanager
def registry(
    directory: Path, *, htpasswd: Credentials | None = None, token: TokenServer | None = None, tls: bool = False
) -> Iterator[Registry]:
    """docker-registry on 127.0.0.1 with storage under `directory` (HTTPS only with `tls`, a self-signed
    certificate); stopped (by PID) on exit."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    listen = ""
    if tls:
        from cryptography.hazmat.primitives import serialization

        key, cert = self_signed_certificate("127.0.0.1", ip="127.0.0.1")
        (directory / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (directory / "tls.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
            )
        )
        listen = f"  tls:\n    certificate: {directory / 'tls.crt'}\n    key: {directory / 'tls.key'}\n"
    auth = ""
    if htpasswd is not None:
        write_htpasswd(directory / "htpasswd", {htpasswd.username: htpasswd.password})
        auth = f"auth:\n  htpasswd:\n    realm: coreos-lab-tests\n    path: {directory / 'htpasswd'}\n"
    elif token is not None:
        auth = (
            f"auth:\n  token:\n    realm: {token.url}\n    service: {SERVICE}\n    issuer: {ISSUER}\n"
            f"    rootcertbundle: {token.cert_path}\n"
        )
    config = directory / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: info\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {directory / 'storage'}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n  secret: {secrets.token_hex(16)}\n" + listen + auth
    )
    log_path = directory / "registry.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            ["docker-registry", "serve", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")},
        )
    running = Registry(directory, port, process, htpasswd, token, log_path, tls)
    try:
        wait_until(lambda: _answers(running), lambda: f"docker-registry on {running.host}: {running.log()}", 60)
        yield running
    finally:
        processes.stop(process)


def seed_test_images(running: Registry, images: BuiltImages) -> None:
    """The etcd image as coreos/etcd:v3.5.16 and the two-platform index as coreos/etcd:multi."""
    creds = running.credentials.creds if running.credentials else None
    if running.token_server is not None and running.token_server.users:
        user, password = next(iter(running.token_server.users.items()))
        creds = f"{user}:{password}"
    seed(images.source(SINGLE), running.host, "coreos/etcd:v3.5.16", creds=creds)
    seed(images.source(MULTI), running.host, "coreos/etcd:multi", all_platforms=True, creds=creds)


def _answers(running: Registry) -> bool:
    if running.process.poll() is not None:
        raise RuntimeError(f"docker-registry exited ({running.process.returncode}): {running.log()}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # urllib3's InsecureRequestWarning: the certificate is our own
            return requests.get(f"{running.url}/v2/", timeout=2, verify=False).status_code in (200, 401)
    except requests.ConnectionError:
        return False


@dataclass
class SeenRequest:
    method: str
    target: str  # as sent: a path, or an absolute URL when the client used the proxy as its http_proxy
    headers: dict[str, str]

    @property
    def path(self) -> str:
        return urlsplit(self.target).path


_BLOB_PATH = re.compile(r"/v2/.+/blobs/(sha256:[0-9a-f]{64})")
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "server", "date"}


class RegistryProxy:
    """A proxy on 127.0.0.1 in front of a registry that records every request and can misbehave on a blob.

    It answers as the registry (`url`, a reverse proxy) and as an `http_proxy` for it (absolute-URL requests).
    Per blob digest: `cut_after` sends that many bytes of the body, then drops the connection (once);
    `hold_after` sends that many, then holds the rest back until `release` is set (a download in progress for as
    long as the test needs). `redirect_blobs_to` answers every blob GET with a 307 to `<that URL>/<digest>`, as
    registries backed by object storage do."""

    def __init__(self, upstream: Registry):
        self.upstream = upstream
        self.requests: list[SeenRequest] = []
        self.cut_after: dict[str, int] = {}
        self.hold_after: dict[str, int] = {}
        self.release = threading.Event()
        self.redirect_blobs_to: str | None = None
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                proxy._forward(self)

            def do_HEAD(self) -> None:
                proxy._forward(self)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="registry-proxy", daemon=True).start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def blob_requests(self, digest: str) -> list[SeenRequest]:
        return [r for r in self.requests if r.method == "GET" and r.path.endswith(f"/blobs/{digest}")]

    def close(self) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> RegistryProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _forward(self, handler: BaseHTTPRequestHandler) -> None:
        self.requests.append(SeenRequest(handler.command, handler.path, dict(handler.headers.items())))
        parts = urlsplit(handler.path)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        blob = _BLOB_PATH.fullmatch(parts.path)
        digest = blob.group(1) if blob else None
        if digest and handler.command == "GET" and self.redirect_blobs_to:
            handler.send_response(307)
            handler.send_header("Location", f"{self.redirect_blobs_to}/{digest}")
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        wanted = ("Authorization", "Accept", "Range", "User-Agent", "Accept-Encoding")
        headers = {k: handler.headers[k] for k in wanted if handler.headers.get(k)}
        conn = http.client.HTTPConnection("127.0.0.1", self.upstream.port, timeout=60)
        try:
            conn.request(handler.command, target, headers=headers)
            resp = conn.getresponse()
            body = resp.read() if handler.command == "GET" else b""
        finally:
            conn.close()
        handler.send_response(resp.status)
        for key, value in resp.getheaders():
            if key.lower() not in _HOP_BY_HOP and key.lower() != "content-length":
                handler.send_header(key, value)
        length = resp.getheader("Content-Length") if handler.command == "HEAD" else str(len(body))
        handler.send_header("Content-Length", length or "0")
        handler.end_headers()
        cut = self.cut_after.pop(digest, None) if digest else None
        hold = self.hold_after.get(digest) if digest else None
        if cut is not None:
            handler.wfile.write(body[:cut])
            handler.wfile.flush()
            handler.close_connection = True
            handler.connection.shutdown(socket.SHUT_RDWR)
            return
        if hold is not None:
            handler.wfile.write(body[:hold])
            handler.wfile.flush()
            self.release.wait()
            body = body[hold:]
        handler.wfile.write(body)


class BlobStorage:
    """Object storage stand-in: `GET /<digest>` answers a blob's bytes straight from a registry's storage
    directory, and records the headers each request came with (a redirected client must not send its
    registry credentials here)."""

    def __init__(self, upstream: Registry):
        self.requests: list[SeenRequest] = []
        storage = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                storage.requests.append(SeenRequest(self.command, self.path, dict(self.headers.items())))
                data_path = upstream.blob_data(self.path.strip("/"))
                data = data_path.read_bytes() if data_path.is_file() else None
                self.send_response(200 if data is not None else 404)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data or b"")))
                self.end_headers()
                self.wfile.write(data or b"")

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="blob-storage", daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> BlobStorage:
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
