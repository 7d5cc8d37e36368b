"""Image references as Docker and the OCI Distribution spec write them: `[registry/]repository[:tag][@digest]`.

The registry is the first path component when it looks like a host (has a `.` or a `:`, or is `localhost`);
without one the reference is Docker Hub's, where one-component names live under `library/`. The mirror keeps
and serves an image under its repository alone (docs/field-notes.md §7): `quay.io/coreos/etcd:v3.5.16` is
`coreos/etcd:v3.5.16` there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from coreos_lab.errors import BadInput

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"  # where docker.io's registry API answers
DEFAULT_TAG = "latest"

# The distribution spec's grammar: path components of lower-case alphanumerics joined by separators.
COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
REPOSITORY_RE = re.compile(rf"{COMPONENT}(?:/{COMPONENT})*")
TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
MAX_REPOSITORY_LENGTH = 255  # the distribution spec's advice: clients cap host and name together at 255
HOST_RE = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)*|\[[0-9A-Fa-f:]+\])(?::[0-9]+)?")


@dataclass(frozen=True)
class ImageRef:
    registry: str  # host[:port] as written (docker.io for Docker Hub)
    repository: str  # e.g. coreos/etcd, library/debian
    tag: str | None = None
    digest: str | None = None  # sha256:<hex>, when pinned

    @property
    def reference(self) -> str:
        """What the registry's manifest URL takes: the digest when pinned, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    @property
    def api_host(self) -> str:
        """Where the registry's /v2/ API answers."""
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def mirror_reference(self) -> str:
        """The image as the mirror stores and serves it: `quay.io/coreos/etcd:v3.5.16` → `coreos/etcd:v3.5.16`
        (the registry host dropped; a digest kept, which Docker then pulls by)."""
        return self.repository + (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def check_repository(name: str, field: str = "repository") -> str:
    if len(name or "") > MAX_REPOSITORY_LENGTH:
        raise BadInput(
            f"invalid image {field} {name[:32]!r}… ({len(name)} characters): at most {MAX_REPOSITORY_LENGTH}"
        )
    if not REPOSITORY_RE.fullmatch(name or ""):
        raise BadInput(
            f"invalid image {field} {name!r}: lower-case letters, digits and '.', '_', '-' separators, "
            "components joined by '/' (e.g. coreos/etcd)"
        )
    return name


def check_tag(tag: str, field: str = "tag") -> str:
    if not TAG_RE.fullmatch(tag or ""):
        raise BadInput(f"invalid image {field} {tag!r}: up to 128 letters, digits, '_', '.', '-' (e.g. v3.5.16)")
    return tag


def check_digest(digest: str, field: str = "digest") -> str:
    if not DIGEST_RE.fullmatch(digest or ""):
        raise BadInput(f"invalid {field} {digest!r}: expected sha256: and 64 lower-case hex digits")
    return digest


def parse_reference(text: str) -> ImageRef:
    """`quay.io/coreos/etcd:v3.5.16`, `debian`, `127.0.0.1:5000/x/y@sha256:…` → ImageRef; BadInput names the
    value and what is wrong."""
    if not isinstance(text, str) or not text.strip() or text != text.strip():
        raise BadInput(f"invalid image reference {text!r}: e.g. quay.io/coreos/etcd:v3.5.16")
    rest, digest = text, None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        check_digest(digest, f"digest in image reference {text!r}:")
    first, slash, remainder = rest.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        if not HOST_RE.fullmatch(first):
            raise BadInput(f"invalid registry {first!r} in image reference {text!r}")
        registry, path = first.lower(), remainder  # host names are case-insensitive; requests lowercases them
    else:
        registry, path = DOCKER_HUB, rest
    tag = None
    name, colon, maybe_tag = path.rpartition(":")
    if colon and "/" not in maybe_tag:
        path, tag = name, check_tag(maybe_tag, f"tag in image reference {text!r}:")
    if registry == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    try:
        check_repository(path)
    except BadInput:
        raise BadInput(
            f"invalid image reference {text!r}: repository {path!r} must be lower-case letters, digits and "
            "'.', '_', '-' separators, components joined by '/'"
        ) from None
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return ImageRef(registry, path, tag, digest)
