"""A client of the OCI Distribution API (Docker Registry HTTP API v2) over requests, for pulling: the `/v2/`
ping and its authentication, manifests by tag or digest (verified), and blob URLs for `mirror.download`
(docs/field-notes.md §7).

Scheme: registries speak HTTPS. A loopback registry (`localhost`, `127.0.0.0/8`, `::1`) is what Docker calls an
insecure registry by default: plain HTTP is allowed and certificates are not checked (its traffic never leaves
the host); any other host is only with `insecure` (like skopeo's `--src-tls-verify=false`). HTTPS is always
tried first.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from coreos_lab.errors import BadInput, LabError
from coreos_lab.mirror.images.auth import (
    Credentials,
    RegistryAuth,
    docker_config_credentials,
    parse_challenge,
    small_body,
)
from coreos_lab.mirror.images.manifests import MANIFEST_MEDIA_TYPES
from coreos_lab.mirror.images.reference import ImageRef
from coreos_lab.mirror.images.store import sha256_digest
from coreos_lab.mirror.upstream import CONNECT_TIMEOUT, READ_TIMEOUT, network_error, session

if TYPE_CHECKING:
    import requests
    import requests.adapters

# The distribution spec lets registries refuse manifests over 4 MiB; nothing bigger is a manifest.
MANIFEST_LIMIT = 4 << 20
ACCEPT = ", ".join(MANIFEST_MEDIA_TYPES)


@dataclass(frozen=True)
class FetchedManifest:
    data: bytes
    media_type: str | None  # the Content-Type the registry sent, when it is a manifest media type
    digest: str  # sha256 of data, checked against what was asked for and Docker-Content-Digest
    url: str


def is_loopback(registry: str) -> bool:
    host = urlsplit(f"//{registry}").hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def registry_error(url: str, resp: requests.Response) -> LabError:
    """The registry's JSON error (`{"errors": [{"code": "MANIFEST_UNKNOWN", "message": …}]}`) as a LabError:
    unknown names and digests are bad input (exit 2), anything else exit 1."""
    codes = []
    try:
        errors = json.loads(small_body(resp)).get("errors") or []
        codes = [f"{e.get('code')}: {e.get('message')}" for e in errors if isinstance(e, dict)]
    except (ValueError, AttributeError):
        pass
    detail = f" ({'; '.join(codes)})" if codes else ""
    message = f"{url}: HTTP {resp.status_code} {resp.reason or ''}".rstrip() + detail
    if resp.status_code == 404:
        return BadInput(message, hint="check the image name and tag (or digest)")
    if resp.status_code in (401, 403):
        return BadInput(message, hint="the image may not exist, or need --username/--password (or `docker login`)")
    return LabError(message)


class RegistryClient:
    """Pulls from one repository of one registry. `ping()` first: it finds the scheme and authenticates."""

    def __init__(
        self,
        ref: ImageRef,
        *,
        credentials: Credentials | None = None,
        insecure: bool = False,
        jobs: int = 4,
    ):
        self.ref = ref
        self.http = session()  # its own: auth and adapters are mounted on it
        self.insecure = insecure or is_loopback(ref.api_host)
        self._mount_adapters(jobs)
        if credentials is None:
            credentials = docker_config_credentials(ref.registry)
        self.auth = RegistryAuth(self.http, ref.api_host, ref.repository, credentials, insecure=self.insecure)
        self.http.auth = self.auth
        self.base = f"https://{ref.api_host}"

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _mount_adapters(self, jobs: int) -> None:
        """Enough kept connections per host for `jobs` blobs at once; for an insecure registry, unchecked TLS for
        its own host only (a token realm or a storage host it redirects to is still checked)."""
        from requests.adapters import HTTPAdapter

        for scheme in ("https://", "http://"):
            self.http.mount(scheme, HTTPAdapter(pool_connections=4, pool_maxsize=max(jobs, 10)))
        if self.insecure:
            import urllib3

            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)  # asked for, or a loopback host
            self.http.mount(f"https://{self.ref.api_host}/", _unchecked_tls(pool_maxsize=max(jobs, 10)))

    def ping(self) -> None:
        """`GET /v2/`: 200 is an open registry, 401 names how to authenticate (`WWW-Authenticate`).

        An insecure registry is asked over HTTPS, then plain HTTP, as Docker does. One on this machine is asked over
        plain HTTP first: nearly every loopback registry is one, and the failed TLS handshake cost ~50 ms of each
        fetch; a TLS-only one answers that request with a 400 (or drops it) and is then asked over HTTPS."""
        import requests

        if is_loopback(self.ref.api_host):
            schemes = ["http", "https"]
        else:
            schemes = ["https", "http"] if self.insecure else ["https"]
        answers: list[requests.Response] = []
        for scheme in schemes:
            url = f"{scheme}://{self.ref.api_host}/v2/"
            try:
                answer = self.http.get(url, timeout=(CONNECT_TIMEOUT, READ_TIMEOUT))
            except requests.exceptions.SSLError as exc:
                if scheme == schemes[-1] and not answers:
                    raise network_error(url, exc) from exc
                continue
            except requests.RequestException as exc:
                if scheme == schemes[-1] and not answers:
                    raise LabError(
                        f"cannot reach the registry at {url}: {exc}",
                        hint="check the name, the network and the proxy settings"
                        + ("" if len(schemes) > 1 else "; a plain-HTTP registry needs --insecure"),
                    ) from exc
                continue
            answers.append(answer)
            if answer.status_code in (200, 401):
                break
        # A registry's answer if one came; else the first answer, which says what the host is instead.
        resp = next((a for a in answers if a.status_code in (200, 401)), answers[0])
        self.base = f"{urlsplit(resp.url).scheme}://{self.ref.api_host}"
        where = f"{self.base}/v2/"
        if resp.status_code == 401:
            header = resp.headers.get("WWW-Authenticate")
            if not header:
                raise LabError(f"{where}: HTTP 401 without a WWW-Authenticate challenge")
            self.auth.authenticate(parse_challenge(header, where), where)
        elif resp.status_code != 200:
            raise LabError(f"{where}: HTTP {resp.status_code} {resp.reason or ''}; not an OCI registry (no /v2/ API)")

    def manifest_url(self, reference: str) -> str:
        return f"{self.base}/v2/{self.ref.repository}/manifests/{reference}"

    def blob_url(self, digest: str) -> str:
        return f"{self.base}/v2/{self.ref.repository}/blobs/{digest}"

    def manifest(self, reference: str, expected: str | None = None) -> FetchedManifest:
        """The manifest or index at a tag or digest, its bytes checked: against the digest asked for (`expected`,
        or `reference` when it is one) and the registry's `Docker-Content-Digest`."""
        import requests
        import urllib3

        url = self.manifest_url(reference)
        expected = expected or (reference if reference.startswith("sha256:") else None)
        try:
            with self.http.get(
                url, headers={"Accept": ACCEPT}, stream=True, timeout=(CONNECT_TIMEOUT, READ_TIMEOUT)
            ) as r:
                if r.status_code != 200:
                    raise registry_error(url, r)
                data = r.raw.read(MANIFEST_LIMIT + 1, decode_content=True)
                content_type = r.headers.get("Content-Type", "").split(";")[0].strip()
                # Some registries say application/json for an OCI manifest without mediaType: let its shape tell.
                media_type = content_type if content_type in MANIFEST_MEDIA_TYPES else None
                announced = r.headers.get("Docker-Content-Digest")
        except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:  # urllib3's: a body cut midway
            raise network_error(url, exc) from exc
        if len(data) > MANIFEST_LIMIT:
            raise BadInput(f"{url}: more than {MANIFEST_LIMIT} bytes; not a manifest")
        digest = sha256_digest(data)
        if expected is not None and digest != expected:
            raise BadInput(f"{url}: the manifest's sha256 is {digest}, but {expected} was asked for; refused")
        if announced and announced.startswith("sha256:") and announced != digest:
            raise BadInput(f"{url}: the manifest's sha256 is {digest}, but Docker-Content-Digest says {announced}")
        return FetchedManifest(data, media_type, digest, url)


def _unchecked_tls(pool_maxsize: int) -> requests.adapters.HTTPAdapter:
    """An adapter that never checks certificates (and so never loads the CA bundle)."""
    from requests.adapters import HTTPAdapter

    class UncheckedTLS(HTTPAdapter):
        def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
            kwargs["verify"] = False
            return super().send(request, **kwargs)

    return UncheckedTLS(pool_maxsize=pool_maxsize)
