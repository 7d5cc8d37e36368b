"""Registry authentication (docs/field-notes.md §7): the `WWW-Authenticate` challenge of the `/v2/` ping,
Bearer tokens from the challenge's realm, Basic credentials, and the credentials in Docker's config.json.

`RegistryAuth` is a requests auth: it adds `Authorization` only to requests for the registry's own host (a blob
redirected to a storage host gets none; requests also drops the header itself on a redirect to another host),
and answers a 401 (a token that expired during a long fetch) once with a fresh token and a resend, the way
requests' own digest auth answers its challenge.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from coreos_lab.errors import BadInput, LabError
from coreos_lab.mirror.images.reference import DOCKER_HUB
from coreos_lab.mirror.upstream import CONNECT_TIMEOUT, READ_TIMEOUT, network_error

if TYPE_CHECKING:
    import requests

# Docker Hub's credentials are kept under its v1 index URL (`docker login` writes that key).
DOCKER_HUB_KEYS = ("https://index.docker.io/v1/", "index.docker.io", "docker.io", "registry-1.docker.io")


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str
    origin: str  # where they came from, for messages: "--username", "/home/u/.docker/config.json"

    def basic_header(self) -> str:
        return "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()


@dataclass(frozen=True)
class Challenge:
    scheme: str  # "bearer" or "basic", lower-case
    params: dict[str, str]


def parse_challenge(header: str, where: str) -> Challenge:
    """`Bearer realm="https://auth…",service="registry…",scope="repository:x:pull"` or `Basic realm="…"`."""
    from requests.utils import parse_dict_header

    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() not in ("bearer", "basic"):
        raise LabError(f"{where}: unsupported authentication {header!r} (only Bearer and Basic are)")
    params = {k.lower(): v for k, v in parse_dict_header(rest).items() if v is not None}
    if scheme.lower() == "bearer" and not params.get("realm"):
        raise LabError(f"{where}: the Bearer challenge names no realm: {header!r}")
    return Challenge(scheme.lower(), params)


def docker_config_path() -> Path:
    """Docker's client config: `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`."""
    directory = os.environ.get("DOCKER_CONFIG")
    return Path(directory) / "config.json" if directory else Path.home() / ".docker" / "config.json"


def docker_config_credentials(registry: str, path: Path | None = None) -> Credentials | None:
    """The `auths[<registry>].auth` entry (base64 of `user:password`) of Docker's config.json, or None. Keys may
    be written with a scheme (`https://quay.io`); credential helpers (`credsStore`) are not read."""
    path = path or docker_config_path()
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise BadInput(f"cannot read Docker's credentials {path}: {exc}") from None
    auths = doc.get("auths") if isinstance(doc, dict) else None
    if not isinstance(auths, dict):
        return None
    wanted = DOCKER_HUB_KEYS if registry == DOCKER_HUB else (registry,)
    for key, entry in auths.items():
        host = (urlsplit(key).netloc if "://" in key else key.rstrip("/")).lower()  # host names: any case
        if key not in wanted and host not in wanted:
            continue
        encoded = entry.get("auth") if isinstance(entry, dict) else None
        if not encoded:
            continue
        try:
            username, sep, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            username, sep, password = "", "", ""
        if not sep or not username:
            raise BadInput(f"{path}: field auths[{key!r}].auth is not base64 of user:password")
        return Credentials(username, password, str(path))
    return None


BODY_LIMIT = 64 << 10  # an error or a token answer is small; more is not read


def small_body(resp: requests.Response) -> bytes:
    """At most BODY_LIMIT bytes of a streamed response's body, so a server cannot make us hold more (b"" when
    the body cannot be read: the caller's message says what was missing)."""
    import urllib3

    try:
        return resp.raw.read(BODY_LIMIT, decode_content=True) or b""
    except (OSError, urllib3.exceptions.HTTPError):
        return b""


class RegistryAuth:
    """Authorization for one registry host: none, Basic, or a Bearer token for one repository's pull scope."""

    def __init__(
        self,
        http: requests.Session,
        netloc: str,
        repository: str,
        credentials: Credentials | None,
        *,
        insecure: bool = False,
    ):
        self.http = http
        self.insecure = insecure  # the registry is loopback or --insecure: plain HTTP is allowed
        self.netloc = netloc
        self.repository = repository
        self.credentials = credentials
        self.header: str | None = None
        self._lock = threading.Lock()

    def authenticate(self, challenge: Challenge, where: str) -> None:
        """Answer a challenge: a Basic header from the credentials, or a token from the realm."""
        if challenge.scheme == "basic":
            if self.credentials is None:
                raise BadInput(
                    f"{where} needs a user name and password (HTTP Basic)",
                    hint="pass --username and --password (or --password-stdin), or run `docker login` first",
                )
            self.header = self.credentials.basic_header()
            return
        self.header = f"Bearer {self._token(challenge)}"

    def _token(self, challenge: Challenge) -> str:
        """GET <realm>?service=…&scope=repository:<name>:pull, anonymously or with Basic credentials."""
        import requests

        realm = challenge.params["realm"]
        params = {"scope": f"repository:{self.repository}:pull"}
        if "service" in challenge.params:
            params["service"] = challenge.params["service"]
        if self.credentials is not None and urlsplit(realm).scheme != "https" and not self.insecure:
            # The realm is any host the registry names: never send a password there in clear text.
            raise LabError(
                f"the registry's token realm {realm} is not HTTPS; refusing to send the credentials of "
                f"{self.credentials.username!r} (from {self.credentials.origin}) over it",
                hint="pass --insecure if this registry is yours and its network is trusted",
            )
        auth = (self.credentials.username, self.credentials.password) if self.credentials else _no_auth
        try:
            with self.http.get(
                realm, params=params, auth=auth, stream=True, timeout=(CONNECT_TIMEOUT, READ_TIMEOUT)
            ) as resp:
                body = small_body(resp)
        except requests.RequestException as exc:
            raise network_error(realm, exc) from exc
        if resp.status_code in (401, 403):
            if self.credentials is None:
                raise BadInput(
                    f"{realm} gives no anonymous token for {self.repository} (HTTP {resp.status_code})",
                    hint="pass --username and --password (or --password-stdin), or run `docker login` first",
                )
            raise BadInput(
                f"{realm} refused the credentials of {self.credentials.username!r} "
                f"(from {self.credentials.origin}) for {self.repository} (HTTP {resp.status_code})"
            )
        if resp.status_code != 200:
            raise LabError(f"{realm}: HTTP {resp.status_code} {resp.reason or ''} while asking for a token".rstrip())
        try:
            doc = json.loads(body)
            token = doc.get("token") or doc.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise LabError(f"{realm}: the answer holds no token (expected JSON with a token field)")
        return token

    # -- requests' auth protocol ---------------------------------------------------------------------------
    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        if self.header and urlsplit(request.url or "").netloc == self.netloc:
            request.headers["Authorization"] = self.header
        request.register_hook("response", self._renew_on_401)
        return request

    def _renew_on_401(self, resp: requests.Response, **kwargs: Any) -> requests.Response:
        """A registry 401 on a request that carried a token: take a fresh token once and send it again."""
        sent = resp.request.headers.get("Authorization", "")
        if (
            resp.status_code != 401
            or not sent.startswith("Bearer ")
            or urlsplit(resp.url).netloc != self.netloc
            or getattr(resp.request, "_lab_renewed", False)
        ):
            return resp
        header = resp.headers.get("WWW-Authenticate", "")
        with self._lock:
            if self.header == sent:  # not renewed by another thread meanwhile
                self.authenticate(parse_challenge(header, resp.url), resp.url)
        small_body(resp)  # read the small body, so the connection can be reused
        resp.close()
        again = resp.request.copy()
        again.headers["Authorization"] = self.header or ""
        again._lab_renewed = True  # type: ignore[attr-defined]
        renewed = resp.connection.send(again, **kwargs)
        renewed.history.append(resp)
        renewed.request = again
        return renewed


def _no_auth(request: requests.PreparedRequest) -> requests.PreparedRequest:
    """An explicit "no credentials" (so a session-wide auth is not applied)."""
    return request
