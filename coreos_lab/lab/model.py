"""The typed result of loading a lab: `LabConfig`, its machines and the lists lab.yaml holds."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from coreos_lab.distros import DISTROS
from coreos_lab.lab.settings import SETTINGS_BY_PATH, STRUCTURED


@dataclass(frozen=True)
class ForwardedPort:
    guest: int
    host: int
    protocol: str = "tcp"
    node: str | None = None  # None: every machine (host ports auto-corrected by Vagrant)


@dataclass(frozen=True)
class SharedFolder:
    host: str
    guest: str


@dataclass(frozen=True)
class DropIn:
    name: str
    content: str


@dataclass(frozen=True)
class Unit:
    name: str
    command: str | None = None
    enable: bool | None = None
    content: str | None = None
    drop_ins: tuple[DropIn, ...] = ()
    machines: tuple[str, ...] = ()  # empty: every machine


@dataclass(frozen=True)
class Machine:
    """One machine of the lab (a Vagrant machine, a node of the cluster): its address and etcd role."""

    index: int  # 1-based
    name: str
    ip: str
    etcd_member: bool
    metadata: tuple[tuple[str, str], ...]

    @property
    def role(self) -> str:
        return "etcd member" if self.etcd_member else "etcd proxy"

    @property
    def peer_url(self) -> str:
        return f"http://{self.ip}:2380"

    @property
    def client_url(self) -> str:
        return f"http://{self.ip}:2379"

    @property
    def fleet_metadata(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.metadata)

    @property
    def user_data(self) -> str:
        """The node's user-data file, relative to the lab directory."""
        return f"user-data/{self.name}.yaml"

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "name": self.name,
            "ip": self.ip,
            "etcd_member": self.etcd_member,
            "metadata": dict(self.metadata),
            "user_data": self.user_data,
        }


@dataclass(frozen=True)
class LabConfig:
    lab_dir: Path
    values: Mapping[str, Any]  # every scalar setting by dotted path, resolved
    sources: Mapping[str, str]  # dotted path → "default" | "lab.yaml" | "env LAB_…" | "flag --…"
    nodes: tuple[Machine, ...]
    forwarded_ports: tuple[ForwardedPort, ...] = ()
    shared_folders: tuple[SharedFolder, ...] = ()
    units: tuple[Unit, ...] = ()
    fleet_metadata: tuple[tuple[str, str], ...] = ()
    structured: Mapping[str, Any] = field(default_factory=dict)  # lists/mappings as given, for display

    def __getitem__(self, path: str) -> Any:
        return self.values[path]

    @property
    def distro(self) -> str:
        return str(self.values["distro"])

    @property
    def channel(self) -> str:
        return str(self.values["channel"])

    @property
    def version(self) -> str:
        return str(self.values["version"])

    @property
    def provider(self) -> str:
        return str(self.values["provider"])

    @property
    def box_name(self) -> str:
        return DISTROS[self.distro].box_name(self.channel)

    @property
    def etcd_members(self) -> int:
        return int(self.values["etcd.members"])

    @property
    def discovery_mode(self) -> str:
        return str(self.values["discovery.mode"])

    @property
    def mirror_url(self) -> str:
        return str(self.values["mirror.url"]).rstrip("/")

    @property
    def mirror_root(self) -> Path:
        return Path(self.values["mirror.root"])

    @property
    def guest_host(self) -> str:
        return str(self.values["mirror.guest_host"])

    @property
    def mirror_token_file(self) -> str | None:
        """The private mirror's token file as lab.yaml names it (the Vagrantfile expands it); None: no token."""
        value = self.values.get("mirror.token_file")
        return str(value) if value else None

    @property
    def mirror_token_path(self) -> Path | None:
        """The token file where the Vagrantfile reads it: `~` expanded, a relative path under the lab directory."""
        from coreos_lab.paths import expand_user

        path = expand_user(self.mirror_token_file) if self.mirror_token_file else None
        return Path(self.lab_dir) / path if path is not None else None

    @property
    def box_metadata_url(self) -> str:
        """Vagrant reads box metadata here (on the host side)."""
        from coreos_lab.mirror.store import metadata_url

        return metadata_url(self.box_name, self.mirror_url)

    @property
    def guest_mirror_url(self) -> str:
        """The mirror server's base URL as guests reach it: same port and path, the guest-side host address."""
        return guest_url(self.mirror_url, self.guest_host)

    @property
    def etcd_image(self) -> str | None:
        """The image etcd runs from, as configured (etcd.image, default the distro's); None: etcd is on the host."""
        image = self.values.get("etcd.image")
        return str(image) if image is not None else None

    @property
    def etcd_image_from_mirror(self) -> bool:
        """Whether the guests pull etcd's image from the lab's mirror (else from its own registry)."""
        return self.etcd_image is not None and self.values["etcd.image_source"] == "mirror"

    @property
    def guest_registry(self) -> str:
        """The mirror as a registry the guests reach, `host:port`: Docker's name for it (no scheme, no path)."""
        return urlsplit(self.guest_mirror_url).netloc

    @property
    def guest_etcd_image(self) -> str | None:
        """What the guests' ETCD_IMAGE says: the image in the mirror's registry (its repository without the
        upstream registry host: coreos/etcd:v3.5.16); from upstream, the image as given only when the user named
        one. None: the unit's own default."""
        if self.etcd_image is None:
            return None
        if self.etcd_image_from_mirror:
            from coreos_lab.mirror.images.reference import parse_reference

            return f"{self.guest_registry}/{parse_reference(self.etcd_image).mirror_reference}"
        return self.etcd_image if self.sources.get("etcd.image", "default") != "default" else None

    @property
    def insecure_registry(self) -> str | None:
        """The one registry the guests' Docker must allow over plain HTTP: the mirror, when etcd's image comes
        from it over http (Docker speaks only HTTPS to any other registry)."""
        if self.etcd_image_from_mirror and urlsplit(self.guest_mirror_url).scheme == "http":
            return self.guest_registry
        return None

    @property
    def user_data_dir(self) -> str:
        return DISTROS[self.distro].user_data_dir

    def as_dict(self) -> dict[str, Any]:
        return {
            "lab_dir": str(self.lab_dir),
            "box": {"name": self.box_name, "version": self.version, "metadata_url": self.box_metadata_url},
            "settings": {p: {"value": self.values[p], "source": self.sources[p]} for p in SETTINGS_BY_PATH},
            "structured": {
                p: {"value": self.structured.get(p), "source": self.sources.get(p, "default")} for p in STRUCTURED
            },
            "nodes": [n.as_dict() for n in self.nodes],
        }


def guest_url(host_url: str, guest_host: str) -> str:
    parts = urlsplit(host_url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return urlunsplit((parts.scheme, f"{guest_host}:{port}", parts.path.rstrip("/"), "", ""))
