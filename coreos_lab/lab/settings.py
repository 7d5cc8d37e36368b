"""The settings table: one row per scalar setting of lab.yaml, plus the lists and mappings lab.yaml alone holds.

Precedence, lowest first: built-in defaults ← lab.yaml ← environment `LAB_*` ← command-line flags (applied by
`coreos_lab.lab.config`). Every scalar setting has one dotted path (`etcd.members`); its environment variable and
flag follow from it (`LAB_ETCD_MEMBERS`, `--etcd-members`). Lists and mappings (ports, folders, units, metadata)
come from lab.yaml only.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coreos_lab.distros import DISTRO_NAMES, DISTROS
from coreos_lab.paths import expand_user
from coreos_lab.vagrant.libvirt import DRIVERS as LIBVIRT_DRIVERS
from coreos_lab.vagrant.libvirt import MANAGEMENT_NETWORK
from coreos_lab.vagrant.providers import DEFAULT_PROVIDER, PROVIDER_NAMES, PROVIDERS

CONFIG_FILE = "lab.yaml"
MAX_NODES = 99  # node names are <prefix>-01 … <prefix>-99
DEFAULT_ETCD_MEMBERS = 3  # a larger lab runs etcd as a proxy on the other nodes: quorum stays cheap

DISCOVERY_MODES = ("local", "public", "static")
# Where the guests pull etcd's container image (Flatcar): from the lab's mirror, served to them as a registry,
# or from the image's own registry (quay.io), which a firewall may block.
IMAGE_SOURCES = ("mirror", "upstream")
REBOOT_STRATEGIES = ("off", "reboot", "etcd-lock", "best-effort")


@dataclass(frozen=True)
class Setting:
    path: str
    kind: type  # str, int or bool
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    minimum: int | None = None
    maximum: int | None = None
    optional: bool = False  # None is an allowed value
    flag_name: str | None = None  # when the flag is not derived from the path

    @property
    def env(self) -> str:
        return "LAB_" + self.path.replace(".", "_").upper()

    @property
    def flag(self) -> str:
        return self.flag_name or "--" + self.path.replace(".", "-").replace("_", "-")


SETTINGS: tuple[Setting, ...] = (
    Setting("distro", str, "coreos", " or ".join(d.summary for d in DISTROS.values()), DISTRO_NAMES),
    Setting("channel", str, "stable", "release channel; the box is <distro>-<channel>"),
    Setting("version", str, None, "box version, pinned to one the mirror has (`lab init` pins the newest)"),
    Setting("provider", str, DEFAULT_PROVIDER, "Vagrant provider", PROVIDER_NAMES),
    Setting("nodes", int, 3, "number of machines", minimum=1, maximum=MAX_NODES),
    Setting("name_prefix", str, "core", "machine names are <prefix>-01, <prefix>-02, …"),
    Setting("subnet", str, "172.17.8.0/24", "private network; node i gets host address 100+i"),
    Setting("memory", int, 1024, "MiB of memory per machine", minimum=128, maximum=1048576),
    Setting("cpus", int, 1, "virtual CPUs per machine", minimum=1, maximum=256),
    Setting("gui", bool, False, "show the VM window"),
    Setting("serial_logging", bool, False, "log each machine's serial console to log/<name>-serial.txt"),
    Setting("share_home", bool, False, "share $HOME with every machine over NFS"),
    Setting(
        "expose_docker_tcp",
        int,
        None,
        "host port forwarded to the first machine's Docker TCP socket (2375), +1 per machine",
        minimum=1,
        maximum=65535,
        optional=True,
    ),
    Setting("virtualbox.cpu_execution_cap", int, 100, "VirtualBox CPU execution cap in percent", None, 1, 100),
    Setting(
        "libvirt.driver",
        str,
        "auto",
        "libvirt domain type: kvm, qemu (software emulation) or auto (kvm where a test guest really runs)",
        LIBVIRT_DRIVERS,
    ),
    Setting(
        "libvirt.management_network",
        str,
        MANAGEMENT_NETWORK,
        "vagrant-libvirt's management network (NAT + DHCP); guests reach the host at its first address",
    ),
    Setting(
        "etcd.members",
        int,
        None,
        "how many machines (the first ones) are etcd members; the rest run etcd as a proxy (default: up to 3)",
        minimum=1,
        maximum=MAX_NODES,
        optional=True,
    ),
    Setting(
        "etcd.image",
        str,
        None,
        "the container image etcd runs from; default: the distro's ("
        + ", ".join(f"{d.name}: {d.etcd_image}" for d in DISTROS.values() if d.etcd_image)
        + ")",
        optional=True,
    ),
    Setting(
        "etcd.image_source",
        str,
        "mirror",
        "where the guests pull etcd's image: the lab's mirror (as a registry), or upstream (the image's registry)",
        IMAGE_SOURCES,
    ),
    Setting(
        "discovery.mode", str, "local", "local token service, a public one, or a static member list", DISCOVERY_MODES
    ),
    Setting("discovery.url", str, "https://discovery.etcd.io", "public discovery service (public mode only)"),
    Setting("mirror.url", str, "http://127.0.0.1:8080", "the box mirror and discovery server, as the host reaches it"),
    Setting(
        "mirror.root",
        str,
        None,
        "mirror directory (default: $LAB_MIRROR_ROOT, ./boxes, ~/.local/share/coreos-lab/boxes)",
        optional=True,
        flag_name="--root",
    ),
    Setting(
        "mirror.guest_host",
        str,
        None,
        "the host's address as guests reach it (default per provider; VirtualBox NAT: 10.0.2.2)",
        optional=True,
    ),
    Setting(
        "mirror.token_file",
        str,
        None,
        "file with the private mirror's token (`lab mirror serve --token-file`); the Vagrantfile reads it at each "
        "run (relative: to the lab directory), so the secret is never written into the lab",
        optional=True,
    ),
    Setting("update.reboot_strategy", str, "off", "locksmith reboot strategy", REBOOT_STRATEGIES),
)
SETTINGS_BY_PATH = {s.path: s for s in SETTINGS}

# Settings that hold lists or mappings (lab.yaml only), with what they hold.
STRUCTURED: dict[str, str] = {
    "forwarded_ports": "list of {guest, host, protocol: tcp|udp, node}",
    "shared_folders": "list of {host, guest}",
    "fleet.metadata": "mapping of key: value added to every machine's fleet metadata",
    "machines": "mapping of machine name → {ip, metadata}",
    "units": "list of {name, command, enable, content, drop_ins: [{name, content}], machines}",
}
SECTIONS = sorted({p.split(".", 1)[0] for p in [*SETTINGS_BY_PATH, *STRUCTURED] if "." in p})
TOP_LEVEL = sorted({p.split(".", 1)[0] for p in [*SETTINGS_BY_PATH, *STRUCTURED]})


def fill_dependent_defaults(lab_dir: Path, values: dict[str, Any], sources: dict[str, str]) -> None:
    """Defaults that depend on other settings (their source stays "default")."""
    if values["etcd.members"] is None:
        values["etcd.members"] = min(DEFAULT_ETCD_MEMBERS, values["nodes"])
    if values["etcd.image"] is None and values["distro"] in DISTROS:
        values["etcd.image"] = DISTROS[values["distro"]].etcd_image  # None where etcd is on the host
    if values["mirror.guest_host"] is None:
        provider = PROVIDERS.get(values["provider"])  # None: a bad provider, reported by validation
        management = parse_subnet(str(values["libvirt.management_network"]))
        values["mirror.guest_host"] = provider.guest_host(str(management) if management else None) if provider else ""
    if values["mirror.root"] is None:
        from coreos_lab.paths import default_mirror_root

        values["mirror.root"] = str(default_mirror_root())
    elif (root := expand_user(str(values["mirror.root"]))) is None:
        pass  # `~nosuchuser/…`: reported by validation
    elif sources["mirror.root"] == CONFIG_FILE:
        # A relative root in lab.yaml is relative to the lab, not to wherever `lab` runs.
        values["mirror.root"] = str((lab_dir / root).resolve())
    else:
        values["mirror.root"] = str(root.resolve())
    token_file = values.get("mirror.token_file")
    if token_file and sources["mirror.token_file"] != CONFIG_FILE and (path := expand_user(str(token_file))):
        # From a flag or the environment: relative to where `lab` runs (the Vagrantfile reads it from the lab).
        values["mirror.token_file"] = str(path.resolve())
    values["mirror.url"] = str(values["mirror.url"]).rstrip("/")
    values["subnet"] = str(parse_subnet(str(values["subnet"])) or values["subnet"])


def parse_subnet(text: str) -> ipaddress.IPv4Network | None:
    """`172.17.8.0/24`, or coreos-vagrant's style `172.17.8` (a /24)."""
    if re.match(r"^\d+\.\d+\.\d+$", text):
        text += ".0/24"
    try:
        return ipaddress.IPv4Network(text, strict=True)
    except ValueError:
        return None
