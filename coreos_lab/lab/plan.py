"""What lifecycle and doctor need to know about a lab, taken from its configuration in one place.

`LabPlan` is deliberately small: the machine names, the provider, the box and where it is served, etcd's
image (Flatcar), the private subnet and the host ports the lab will bind. Everything else stays with `config`
and `render`; a plan made by `load_plan` carries the configuration it was made from, so that `lab up` reads
lab.yaml once and hands it down to render.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from coreos_lab.lab.config import load_config
from coreos_lab.lab.model import LabConfig
from coreos_lab.vagrant.providers import PROVIDERS

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


@dataclass(frozen=True)
class LabPlan:
    lab_dir: Path
    nodes: tuple[str, ...]
    provider: str
    distro: str
    box_name: str
    box_version: str | None
    mirror_url: str
    subnet: ipaddress.IPv4Network | None = None
    host_ports: tuple[int, ...] = ()  # forwarded ports the lab binds on the host
    etcd_members: int | None = None
    etcd_nodes: tuple[str, ...] | None = None  # the machines that are etcd members (the others run a proxy)
    mirror_root: Path | None = None
    mirror_token_file: Path | None = None  # a private mirror's token (mirror.token_file)
    guest_host: str | None = None  # the host's address as guests reach it (mirror.guest_host)
    management_network: str | None = None  # libvirt: the management network's subnet
    libvirt_driver: str | None = None  # libvirt: the domain type as configured (auto, kvm or qemu)
    etcd_image: str | None = None  # the container image etcd runs from (Flatcar), as configured
    etcd_image_from_mirror: bool = False  # the guests pull it from the lab's mirror (else from its registry)
    config: LabConfig | None = field(default=None, repr=False, compare=False)  # what the plan was made from

    @property
    def mirror_host(self) -> str:
        return urlsplit(self.mirror_url).hostname or ""

    @property
    def mirror_port(self) -> int:
        parts = urlsplit(self.mirror_url)
        return parts.port or (443 if parts.scheme == "https" else 80)

    @property
    def mirror_is_local(self) -> bool:
        """A mirror on this machine's loopback can be started in-process when none is running."""
        return self.mirror_host in LOCAL_HOSTS

    @property
    def guest_listen_hosts(self) -> tuple[str, ...]:
        """Where an embedded server must also listen for guests: with a management network (libvirt) guests reach
        the host at its gateway (VirtualBox NAT reaches the host's loopback by itself)."""
        provider = PROVIDERS.get(self.provider)
        if provider and provider.management_network and self.guest_host and self.guest_host not in LOCAL_HOSTS:
            return (self.guest_host,)
        return ()

    @property
    def metadata_url(self) -> str:
        from coreos_lab.mirror.store import metadata_url

        return metadata_url(self.box_name, self.mirror_url)

    @property
    def state_dir(self) -> Path:
        return self.lab_dir / ".lab"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"


def load_plan(lab_dir: Path) -> LabPlan:
    """The plan of the lab in `lab_dir`, from its lab.yaml (bad config → `BadInput`, exit 2).

    Whether the mirror has the box is left to the caller's preflight: that is a missing prerequisite
    (exit 4), not bad input.
    """
    return plan_from_config(load_config(Path(lab_dir), check_mirror=False))


def plan_from_config(cfg: LabConfig) -> LabPlan:
    subnet = ipaddress.ip_network(str(cfg.values["subnet"]), strict=False)
    # Ports pinned to one machine are bound as given; ports for every machine are auto-corrected by Vagrant.
    host_ports = tuple(sorted({p.host for p in cfg.forwarded_ports if p.node is not None and p.protocol == "tcp"}))
    return LabPlan(
        lab_dir=Path(cfg.lab_dir),
        nodes=tuple(n.name for n in cfg.nodes),
        provider=cfg.provider,
        distro=cfg.distro,
        box_name=cfg.box_name,
        box_version=cfg.values.get("version") or None,
        mirror_url=cfg.mirror_url,
        subnet=subnet if isinstance(subnet, ipaddress.IPv4Network) else None,
        host_ports=host_ports,
        etcd_members=cfg.etcd_members,
        etcd_nodes=tuple(n.name for n in cfg.nodes if n.etcd_member),
        mirror_root=cfg.mirror_root,
        mirror_token_file=cfg.mirror_token_path,
        guest_host=cfg.guest_host or None,
        management_network=(
            str(cfg.values["libvirt.management_network"]) if PROVIDERS[cfg.provider].management_network else None
        ),
        libvirt_driver=str(cfg.values["libvirt.driver"]) if cfg.provider == "libvirt" else None,
        etcd_image=cfg.etcd_image,
        etcd_image_from_mirror=cfg.etcd_image_from_mirror,
        config=cfg,
    )
