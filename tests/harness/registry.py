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
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import secrets
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import requests

from harness import processes
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


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """A Docker token service: `GET /token?service=S&scope=repository:NAME:pull` → `{"token": JWT}`.

    With `users`, only those Basic credentials get a token (others a 401); without, anyone does. Tokens live
    `lifetime` seconds (short ones test a refresh in the middle of a fetch)."""

    def __init__(self, directory: Path, users: dict[str, str] | None = None, lifetime: int = 300):
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        self.users = users
        self.lifetime = lifetime
        self.requests: list[dict[str, str | None]] = []
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ISSUER)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
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
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
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

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

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
    directory: Path, *, htpasswd: Credentials | None = None, token: TokenServer | None = None
) -> Iterator[Registry]:
    """docker-registry on 127.0.0.1 with storage under `directory`; stopped (by PID) on exit."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
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
        f"http:\n  addr: 127.0.0.1:{port}\n  secret: {secrets.token_hex(16)}\n" + auth
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
    running = Registry(directory, port, process, htpasswd, token, log_path)
    try:
        wait_until(lambda: _answers(running), lambda: f"docker-registry on {running.host}: {running.log()}", 60)
        yield running
    finally:
        processes.stop(process)


def _answers(running: Registry) -> bool:
    if running.process.poll() is not None:
        raise RuntimeError(f"docker-registry exited ({running.process.returncode}): {running.log()}")
    try:
        return requests.get(f"{running.url}/v2/", timeout=2).status_code in (200, 401)
    except requests.ConnectionError:
        return False
