"""The lab.yaml model: settings, defaults, validation and where each value came from.

Precedence, lowest first: built-in defaults ← lab.yaml ← environment `LAB_*` ← command-line flags. Every
scalar setting has one dotted path (`etcd.members`); its environment variable and flag follow from it
(`LAB_ETCD_MEMBERS`, `--etcd-members`). Lists and mappings (ports, folders, units, metadata) come from
lab.yaml only.

Validation collects every problem and raises one `BadInput` naming, per problem, the file, the key path, the
value and what is allowed — before anything is written.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from coreos_lab.errors import BadInput
from coreos_lab.vagrant.libvirt import DRIVERS as LIBVIRT_DRIVERS
from coreos_lab.vagrant.libvirt import MANAGEMENT_NETWORK, management_gateway

CONFIG_FILE = "lab.yaml"
MAX_NODES = 99  # node names are <prefix>-01 … <prefix>-99
DEFAULT_ETCD_MEMBERS = 3  # a larger lab runs etcd as a proxy on the other nodes: quorum stays cheap

DISTROS = ("coreos", "flatcar")
CHANNELS = {"coreos": ("alpha", "beta", "stable"), "flatcar": ("alpha", "beta", "stable", "lts")}
# Where the box's path unit picks up user-data (coreos-vagrant's layout, kept by Flatcar).
USER_DATA_DIRS = {"coreos": "/var/lib/coreos-vagrant", "flatcar": "/var/lib/flatcar-vagrant"}
# The host as seen from a guest, per provider: VirtualBox NAT maps the host's loopback to 10.0.2.2; libvirt
# guests reach it at the management network's gateway (vagrant-libvirt's default network shown here).
PROVIDER_GUEST_HOSTS = {"virtualbox": "10.0.2.2", "libvirt": management_gateway()}
PROVIDERS = tuple(PROVIDER_GUEST_HOSTS)
DISCOVERY_MODES = ("local", "public", "static")
REBOOT_STRATEGIES = ("off", "reboot", "etcd-lock", "best-effort")
UNIT_COMMANDS = ("start", "stop", "restart", "reload", "try-restart", "reload-or-restart", "reload-or-try-restart")
UNIT_SUFFIXES = (".service", ".socket", ".timer", ".mount", ".automount", ".path", ".target", ".swap", ".device")

_PREFIX_RE = re.compile(r"^[a-z][a-z0-9-]{0,40}$")
_META_KEY_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
_META_VALUE_RE = re.compile(r"^[A-Za-z0-9_./:-]*$")  # fleet metadata is `k=v,k=v`: no commas or '='
_UNIT_NAME_RE = re.compile(r"^[A-Za-z0-9:_.@-]+$")


# --------------------------------------------------------------------------------------------------------------
# The settings table: one row per scalar setting.


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
    Setting("distro", str, "coreos", "coreos (etcd2 + fleet) or flatcar (etcd-member, no fleet)", DISTROS),
    Setting("channel", str, "stable", "release channel; the box is <distro>-<channel>"),
    Setting("version", str, None, "box version, pinned to one the mirror has (`lab init` pins the newest)"),
    Setting("provider", str, "virtualbox", "Vagrant provider", PROVIDERS),
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


# --------------------------------------------------------------------------------------------------------------
# The typed result.


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
class Node:
    index: int  # 1-based
    name: str
    ip: str
    etcd_member: bool
    metadata: tuple[tuple[str, str], ...]

    @property
    def role(self) -> str:
        return "etcd member" if self.etcd_member else "etcd proxy"

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
    nodes: tuple[Node, ...]
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
        return box_name(self.distro, self.channel)

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
    def box_metadata_url(self) -> str:
        """Vagrant reads box metadata here (on the host side)."""
        from coreos_lab.mirror.store import metadata_url

        return metadata_url(self.box_name, self.mirror_url)

    @property
    def guest_mirror_url(self) -> str:
        """The mirror server's base URL as guests reach it: same port and path, the guest-side host address."""
        return guest_url(self.mirror_url, self.guest_host)

    @property
    def user_data_dir(self) -> str:
        return USER_DATA_DIRS[self.distro]

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


def box_name(distro: str, channel: str) -> str:
    return f"{distro}-{channel}"


def guest_url(host_url: str, guest_host: str) -> str:
    parts = urlsplit(host_url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return urlunsplit((parts.scheme, f"{guest_host}:{port}", parts.path.rstrip("/"), "", ""))


# --------------------------------------------------------------------------------------------------------------
# Loading.


class _Problems:
    """Collects validation problems; raised together so the user fixes them in one go."""

    def __init__(self, origin: str):
        self.origin = origin
        self.items: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.items.append(f"{where}: {message}")

    def raise_if_any(self) -> None:
        if self.items:
            lines = "\n".join(f"  {item}" for item in self.items)
            count = f"{len(self.items)} problems" if len(self.items) > 1 else "1 problem"
            hint = f"fix {self.origin} (or the environment variable / flag named) and try again"
            raise BadInput(f"invalid configuration ({count}):\n{lines}", hint=hint)


def read_lab_yaml(lab_dir: Path) -> dict[str, Any] | None:
    """lab.yaml as a mapping; None when the lab directory has none."""
    import yaml

    path = lab_dir / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise BadInput(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"{path}: cannot read: {exc}") from exc
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise BadInput(f"{path}: expected a mapping of settings at the top level, found {type(doc).__name__}")
    return doc


def load_config(
    lab_dir: Path,
    *,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    require_file: bool = True,
    check_mirror: bool = True,
) -> LabConfig:
    """The effective configuration of the lab in `lab_dir`.

    `flags` maps dotted setting paths to command-line values (None = not given). With `check_mirror`, the
    pinned version must be in the mirror store (a box for the configured provider).
    """
    lab_dir = Path(lab_dir)
    doc = read_lab_yaml(lab_dir)
    origin = str(lab_dir / CONFIG_FILE)
    if doc is None:
        if require_file:
            raise BadInput(f"no {CONFIG_FILE} in {lab_dir}", hint=f"run `lab init {lab_dir}` first")
        doc = {}
    return build_config(lab_dir, doc, origin=origin, flags=flags, environ=environ, check_mirror=check_mirror)


def build_config(
    lab_dir: Path,
    doc: Mapping[str, Any],
    *,
    origin: str,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    check_mirror: bool = True,
) -> LabConfig:
    environ = os.environ if environ is None else environ
    problems = _Problems(origin)
    file_values = _flatten(doc, problems)

    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    before_types = len(problems.items)
    for setting in SETTINGS:
        value, source = setting.default, "default"
        if setting.path in file_values:
            value, source = file_values[setting.path], CONFIG_FILE
            value = _check_type(setting, value, f"{CONFIG_FILE}: {setting.path}", problems)
        if environ.get(setting.env, "").strip():  # an empty variable counts as unset
            env_where = f"environment {setting.env}"
            value, source = _parse_env(setting, environ[setting.env], env_where, problems), f"env {setting.env}"
        if flags and flags.get(setting.path) is not None:
            value, source = flags[setting.path], f"flag {setting.flag}"
        values[setting.path], sources[setting.path] = value, source
    for path in STRUCTURED:
        if path in file_values:
            sources[path] = CONFIG_FILE
    if len(problems.items) > before_types:
        problems.raise_if_any()  # wrong types make the checks below meaningless

    def where(path: str) -> str:
        source = sources[path]
        return f"{CONFIG_FILE}: {path}" if source == CONFIG_FILE else f"{path} (from {source})"

    _check_scalars(values, where, problems, require_version=check_mirror)
    _fill_dependent_defaults(lab_dir, values, sources)
    nodes = _build_nodes(values, file_values, where, problems)
    ports = _build_ports(file_values.get("forwarded_ports"), nodes, problems)
    folders = _build_folders(file_values.get("shared_folders"), lab_dir, problems)
    units = _build_units(file_values.get("units"), nodes, problems)
    fleet_metadata = _build_metadata(file_values.get("fleet.metadata"), "fleet.metadata", problems)
    if values["distro"] == "flatcar":
        for path in ("fleet.metadata", "machines"):
            if _has_fleet_metadata(file_values, path):
                problems.add(f"{CONFIG_FILE}: {path}", "Flatcar has no fleet; remove the metadata or use distro coreos")
    problems.raise_if_any()
    nodes = tuple(_with_fleet_metadata(n, fleet_metadata) for n in nodes)

    config = LabConfig(
        lab_dir=lab_dir,
        values=values,
        sources=sources,
        nodes=nodes,
        forwarded_ports=ports,
        shared_folders=folders,
        units=units,
        fleet_metadata=fleet_metadata,
        structured={p: file_values[p] for p in STRUCTURED if p in file_values},
    )
    if check_mirror:
        check_version_in_mirror(config, where("version"))
    return config


def _flatten(doc: Mapping[str, Any], problems: _Problems) -> dict[str, Any]:
    """lab.yaml's nested mapping as {dotted path: value}; unknown keys are problems."""
    flat: dict[str, Any] = {}
    for key, value in doc.items():
        key = str(key)
        if key in SECTIONS:
            if not isinstance(value, dict):
                problems.add(f"{CONFIG_FILE}: {key}", f"expected a mapping, found {_show(value)}")
                continue
            for sub, subvalue in value.items():
                path = f"{key}.{sub}"
                if path in SETTINGS_BY_PATH or path in STRUCTURED:
                    flat[path] = subvalue
                else:
                    allowed = sorted(
                        p.split(".", 1)[1] for p in [*SETTINGS_BY_PATH, *STRUCTURED] if p.startswith(key + ".")
                    )
                    problems.add(f"{CONFIG_FILE}: {path}", _unknown(str(sub), allowed))
        elif key in SETTINGS_BY_PATH or key in STRUCTURED:
            flat[key] = value
        else:
            problems.add(f"{CONFIG_FILE}: {key}", _unknown(key, TOP_LEVEL))
    return flat


def _unknown(key: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1)
    suggestion = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown key{suggestion}; allowed: {', '.join(allowed)}"


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def _check_type(setting: Setting, value: Any, where: str, problems: _Problems) -> Any:
    if value is None and (setting.optional or setting.default is None):
        return None
    # bool is a subclass of int: `nodes: yes` must not pass as 1.
    ok = isinstance(value, setting.kind) and not (setting.kind is int and isinstance(value, bool))
    if setting.kind is str and isinstance(value, int | float) and not isinstance(value, bool):
        # `version: 3815.2` or `channel: 1` read as numbers; a version must be quoted to keep its digits.
        problems.add(where, f'{value!r} is a number; write it as a quoted string ("{value}")')
        return value
    if not ok:
        problems.add(where, f"{_show(value)} is not {_kind_name(setting.kind)}")
    return value


def _kind_name(kind: type) -> str:
    return {str: "a string", int: "an integer", bool: "true or false"}[kind]


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _parse_env(setting: Setting, raw: str, where: str, problems: _Problems) -> Any:
    text = raw.strip()
    if setting.optional and text.lower() in ("", "none", "null"):
        return None
    if setting.kind is bool:
        if text.lower() in _TRUE | _FALSE:
            return text.lower() in _TRUE
        problems.add(where, f"{raw!r} is not a boolean (true/false, yes/no, 1/0)")
        return None
    if setting.kind is int:
        try:
            return int(text)
        except ValueError:
            problems.add(where, f"{raw!r} is not an integer")
            return None
    return text


def _check_scalars(
    values: dict[str, Any], where: Callable[[str], str], problems: _Problems, *, require_version: bool
) -> None:
    for setting in SETTINGS:
        value = values[setting.path]
        if value is None:
            if setting.path == "version" and require_version:
                problems.add(where("version"), "not set; pin a box version the mirror has (`lab mirror list`)")
            elif not (setting.optional or setting.default is None):
                problems.add(where(setting.path), "must be set")
            continue
        if setting.choices and value not in setting.choices:
            problems.add(where(setting.path), f"{value!r} is not allowed; choose one of {', '.join(setting.choices)}")
        if setting.kind is int and (
            (setting.minimum is not None and value < setting.minimum)
            or (setting.maximum is not None and value > setting.maximum)
        ):
            problems.add(
                where(setting.path), f"{value} is out of range; allowed: {setting.minimum} to {setting.maximum}"
            )
    distro, channel = values["distro"], values["channel"]
    if distro in CHANNELS and channel not in CHANNELS[distro]:
        problems.add(
            where("channel"), f"{channel!r} is not a {distro} channel; choose one of {', '.join(CHANNELS[distro])}"
        )
    if values["version"] is not None:
        from coreos_lab.mirror.store import VERSION_RE

        if not VERSION_RE.match(str(values["version"])):
            problems.add(where("version"), f"{values['version']!r} is not a box version (e.g. 3815.2.0)")
    if not _PREFIX_RE.match(str(values["name_prefix"])):
        problems.add(
            where("name_prefix"),
            f"{values['name_prefix']!r} is not allowed; use lowercase letters, digits and '-', starting with a letter",
        )
    for path in ("mirror.url", "discovery.url"):
        parts = urlsplit(str(values[path]))
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            problems.add(where(path), f"{values[path]!r} is not an http(s) base URL such as http://127.0.0.1:8080")
    guest = values["mirror.guest_host"]
    if guest is not None and not re.match(r"^[A-Za-z0-9.-]+$|^\[[0-9A-Fa-f:]+\]$", str(guest)):
        problems.add(where("mirror.guest_host"), f"{guest!r} is not a host name or IP address")
    management = _parse_subnet(str(values["libvirt.management_network"]))
    if management is None:
        problems.add(
            where("libvirt.management_network"),
            f"{values['libvirt.management_network']!r} is not an IPv4 network such as 192.168.121.0/24",
        )
    elif values["provider"] == "libvirt":
        private = _parse_subnet(str(values["subnet"]))
        if private is not None and private.overlaps(management):
            problems.add(
                where("libvirt.management_network"),
                f"{management} overlaps subnet {private}; the management network and the private network must differ",
            )
    members, nodes = values["etcd.members"], values["nodes"]
    # Only against a valid node count: "1 to 0" would only repeat the node-count problem.
    if members is not None and isinstance(nodes, int) and 1 <= nodes <= MAX_NODES and members > nodes:
        problems.add(where("etcd.members"), f"{members} etcd members but only {nodes} nodes; allowed: 1 to {nodes}")


def _fill_dependent_defaults(lab_dir: Path, values: dict[str, Any], sources: dict[str, str]) -> None:
    """Defaults that depend on other settings (their source stays "default")."""
    if values["etcd.members"] is None:
        values["etcd.members"] = min(DEFAULT_ETCD_MEMBERS, values["nodes"])
    if values["mirror.guest_host"] is None:
        values["mirror.guest_host"] = PROVIDER_GUEST_HOSTS.get(values["provider"], "")  # bad provider: reported
        management = _parse_subnet(str(values["libvirt.management_network"]))
        if values["provider"] == "libvirt" and management is not None:
            values["mirror.guest_host"] = management_gateway(str(management))
    if values["mirror.root"] is None:
        from coreos_lab.paths import default_mirror_root

        values["mirror.root"] = str(default_mirror_root())
    elif sources["mirror.root"] == CONFIG_FILE:
        # A relative root in lab.yaml is relative to the lab, not to wherever `lab` runs.
        values["mirror.root"] = str((lab_dir / Path(values["mirror.root"]).expanduser()).resolve())
    else:
        values["mirror.root"] = str(Path(values["mirror.root"]).expanduser().resolve())
    values["mirror.url"] = str(values["mirror.url"]).rstrip("/")
    values["subnet"] = str(_parse_subnet(str(values["subnet"])) or values["subnet"])


def _parse_subnet(text: str) -> ipaddress.IPv4Network | None:
    """`172.17.8.0/24`, or coreos-vagrant's style `172.17.8` (a /24)."""
    if re.match(r"^\d+\.\d+\.\d+$", text):
        text += ".0/24"
    try:
        return ipaddress.IPv4Network(text, strict=True)
    except ValueError:
        return None


def _build_nodes(
    values: dict[str, Any], file_values: dict[str, Any], where: Callable[[str], str], problems: _Problems
) -> tuple[Node, ...]:
    subnet = _parse_subnet(str(values["subnet"]))
    if subnet is None:
        problems.add(where("subnet"), f"{values['subnet']!r} is not an IPv4 network such as 172.17.8.0/24")
        return ()
    count, prefix, members = values["nodes"], values["name_prefix"], values["etcd.members"]
    if not 1 <= count <= MAX_NODES:
        return ()  # reported with the scalars
    if subnet.num_addresses < 100 + count + 2:
        problems.add(where("subnet"), f"{subnet} is too small for {count} nodes at host addresses 101…{100 + count}")
        return ()
    names = [f"{prefix}-{i:02d}" for i in range(1, count + 1)]
    per_machine = file_values.get("machines") or {}
    if not isinstance(per_machine, dict):
        problems.add(
            f"{CONFIG_FILE}: machines", f"expected a mapping of machine name → settings, found {_show(per_machine)}"
        )
        per_machine = {}
    for name in per_machine:
        if name not in names:
            problems.add(f"{CONFIG_FILE}: machines.{name}", f"no such machine; machines are {names[0]} … {names[-1]}")

    nodes: list[Node] = []
    taken: dict[ipaddress.IPv4Address, str] = {}
    reserved = {subnet.network_address, subnet.broadcast_address, subnet.network_address + 1}
    for i, name in enumerate(names, start=1):
        ip = subnet.network_address + 100 + i
        settings = per_machine.get(name) or {}
        key = f"{CONFIG_FILE}: machines.{name}"
        if not isinstance(settings, dict):
            problems.add(key, f"expected a mapping with ip and/or metadata, found {_show(settings)}")
            settings = {}
        for unknown in sorted(set(settings) - {"ip", "metadata"}):
            problems.add(f"{key}.{unknown}", _unknown(str(unknown), ["ip", "metadata"]))
        if "ip" in settings:
            try:
                ip = ipaddress.IPv4Address(str(settings["ip"]))
            except ValueError:
                problems.add(f"{key}.ip", f"{settings['ip']!r} is not an IPv4 address")
                continue
            if ip not in subnet:
                problems.add(f"{key}.ip", f"{ip} is outside the subnet {subnet}")
            elif ip in reserved:
                problems.add(f"{key}.ip", f"{ip} is reserved in {subnet} (network, broadcast or the host's .1)")
        if ip in taken:
            if "ip" in settings:
                problems.add(f"{key}.ip", f"{ip} is already {taken[ip]}'s address")
            else:  # defaults never clash with each other: the earlier machine's own ip is the culprit
                problems.add(
                    f"{CONFIG_FILE}: machines.{taken[ip]}.ip", f"{ip} is {name}'s default address; choose another"
                )
        taken[ip] = name
        member = i <= members
        metadata = [("role", "services" if member else "worker")]
        own = _build_metadata(settings.get("metadata"), f"machines.{name}.metadata", problems)
        nodes.append(Node(i, name, str(ip), member, _merge_metadata(tuple(metadata), own)))
    return tuple(nodes)


def _build_metadata(raw: Any, path: str, problems: _Problems) -> tuple[tuple[str, str], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        problems.add(f"{CONFIG_FILE}: {path}", f"expected a mapping of key: value, found {_show(raw)}")
        return ()
    items: list[tuple[str, str]] = []
    for key, value in raw.items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        if not _META_KEY_RE.match(str(key)) or isinstance(value, dict | list) or not _META_VALUE_RE.match(text):
            problems.add(
                f"{CONFIG_FILE}: {path}.{key}",
                f"{_show(value)} is not allowed; fleet metadata keys and values use letters, digits and ._-/: only",
            )
            continue
        items.append((str(key), text))
    return tuple(items)


def _merge_metadata(
    base: tuple[tuple[str, str], ...], extra: tuple[tuple[str, str], ...]
) -> tuple[tuple[str, str], ...]:
    merged = dict(base)
    merged.update(extra)
    return tuple(merged.items())


def _with_fleet_metadata(node: Node, common: tuple[tuple[str, str], ...]) -> Node:
    """Precedence per machine: role ← fleet.metadata ← machines.<name>.metadata."""
    role = node.metadata[:1]
    own = node.metadata[1:]
    return Node(node.index, node.name, node.ip, node.etcd_member, _merge_metadata(_merge_metadata(role, common), own))


def _has_fleet_metadata(file_values: dict[str, Any], path: str) -> bool:
    value = file_values.get(path)
    if path == "machines":
        return isinstance(value, dict) and any(isinstance(v, dict) and v.get("metadata") for v in value.values())
    return bool(value)


def _check_keys(item: dict[str, Any], allowed: tuple[str, ...], where: str, problems: _Problems) -> None:
    for key in sorted(set(item) - set(allowed), key=str):
        problems.add(f"{where}.{key}", _unknown(str(key), list(allowed)))


def _port(value: Any, where: str, problems: _Problems) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        problems.add(where, f"{_show(value)} is not a port number (1 to 65535)")
        return 0
    return value


def _build_ports(raw: Any, nodes: tuple[Node, ...], problems: _Problems) -> tuple[ForwardedPort, ...]:
    if raw is None:
        return ()
    base = f"{CONFIG_FILE}: forwarded_ports"
    if not isinstance(raw, list):
        problems.add(base, f"expected a list of {{guest, host}}, found {_show(raw)}")
        return ()
    names = {n.name for n in nodes}
    ports: list[ForwardedPort] = []
    for i, item in enumerate(raw):
        where = f"{base}[{i}]"
        if not isinstance(item, dict) or "guest" not in item or "host" not in item:
            problems.add(where, f"expected {{guest: PORT, host: PORT}}, found {_show(item)}")
            continue
        _check_keys(item, ("guest", "host", "protocol", "node"), where, problems)
        protocol = item.get("protocol", "tcp")
        if protocol not in ("tcp", "udp"):
            problems.add(f"{where}.protocol", f"{protocol!r} is not allowed; choose tcp or udp")
        node = item.get("node")
        if node is not None and node not in names:
            problems.add(f"{where}.node", f"{node!r} is not a machine of this lab ({', '.join(sorted(names))})")
        port = ForwardedPort(
            _port(item["guest"], f"{where}.guest", problems),
            _port(item["host"], f"{where}.host", problems),
            str(protocol),
            node,
        )
        ports.append(port)
    seen: dict[tuple[int, str, str | None], int] = {}
    for i, port in enumerate(ports):
        key = (port.host, port.protocol, port.node)
        if key in seen:
            problems.add(
                f"{base}[{i}].host", f"host port {port.host}/{port.protocol} is already forwarded by [{seen[key]}]"
            )
        seen[key] = i
    return tuple(ports)


def _build_folders(raw: Any, lab_dir: Path, problems: _Problems) -> tuple[SharedFolder, ...]:
    if raw is None:
        return ()
    base = f"{CONFIG_FILE}: shared_folders"
    if not isinstance(raw, list):
        problems.add(base, f"expected a list of {{host, guest}}, found {_show(raw)}")
        return ()
    folders: list[SharedFolder] = []
    for i, item in enumerate(raw):
        where = f"{base}[{i}]"
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("host"), str)
            or not isinstance(item.get("guest"), str)
        ):
            problems.add(where, f"expected {{host: PATH, guest: /ABSOLUTE/PATH}}, found {_show(item)}")
            continue
        _check_keys(item, ("host", "guest"), where, problems)
        host = Path(item["host"]).expanduser()
        if not (lab_dir / host).is_dir():
            problems.add(
                f"{where}.host", f"{item['host']!r} is not a directory (relative paths are relative to the lab)"
            )
        if not item["guest"].startswith("/"):
            problems.add(f"{where}.guest", f"{item['guest']!r} is not an absolute path")
        folders.append(SharedFolder(item["host"], item["guest"]))
    return tuple(folders)


def _text(value: Any, where: str, problems: _Problems) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        problems.add(where, f"{_show(value)} is not text")
        return None
    return value if value.endswith("\n") else value + "\n"


def _build_units(raw: Any, nodes: tuple[Node, ...], problems: _Problems) -> tuple[Unit, ...]:
    if raw is None:
        return ()
    base = f"{CONFIG_FILE}: units"
    if not isinstance(raw, list):
        problems.add(base, f"expected a list of units, found {_show(raw)}")
        return ()
    names = [n.name for n in nodes]
    units: list[Unit] = []
    for i, item in enumerate(raw):
        where = f"{base}[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            problems.add(where, f"expected a mapping with at least a name, found {_show(item)}")
            continue
        _check_keys(item, ("name", "command", "enable", "content", "drop_ins", "machines"), where, problems)
        name = item["name"]
        if not _UNIT_NAME_RE.match(name) or not name.endswith(UNIT_SUFFIXES):
            problems.add(f"{where}.name", f"{name!r} is not a systemd unit name (e.g. hello.service)")
        command = item.get("command")
        if command is not None and command not in UNIT_COMMANDS:
            problems.add(f"{where}.command", f"{command!r} is not allowed; choose one of {', '.join(UNIT_COMMANDS)}")
        enable = item.get("enable")
        if enable is not None and not isinstance(enable, bool):
            problems.add(f"{where}.enable", f"{_show(enable)} is not true or false")
        drop_ins: list[DropIn] = []
        for j, drop in enumerate(item.get("drop_ins") or []):
            dwhere = f"{where}.drop_ins[{j}]"
            if not isinstance(drop, dict) or not str(drop.get("name", "")).endswith(".conf") or "content" not in drop:
                problems.add(dwhere, "expected {name: NAME.conf, content: TEXT}")
                continue
            drop_ins.append(DropIn(str(drop["name"]), _text(drop["content"], f"{dwhere}.content", problems) or ""))
        machines = item.get("machines") or []
        if not isinstance(machines, list) or any(m not in names for m in machines):
            problems.add(
                f"{where}.machines", f"{_show(machines)} is not a list of this lab's machines ({', '.join(names)})"
            )
            machines = []
        units.append(
            Unit(
                name=name,
                command=command,
                enable=enable,
                content=_text(item.get("content"), f"{where}.content", problems),
                drop_ins=tuple(drop_ins),
                machines=tuple(machines),
            )
        )
    return tuple(units)


# --------------------------------------------------------------------------------------------------------------
# The mirror.


def check_version_in_mirror(config: LabConfig, where: str) -> None:
    from coreos_lab.mirror.store import BoxKey, MirrorStore

    store = MirrorStore(config.mirror_root)
    key = BoxKey(config.box_name, config.version, config.provider)
    if store.get(key) is not None:
        return
    have = [e.version for e in store.entries(config.box_name) if e.provider == config.provider]
    found = f"it has {', '.join(have)}" if have else f"it has no {config.box_name} box for {config.provider}"
    raise BadInput(
        f"{where}: {config.version!r} is not in the mirror at {store.root}: {found}",
        hint=fetch_hint(config.distro, config.channel, config.version),
    )


def fetch_hint(distro: str, channel: str, version: str | None = None) -> str:
    pinned = f" --version {version}" if version else ""
    return f"put the box in the mirror first: `lab mirror fetch --distro {distro} --channel {channel}{pinned}` (or `lab mirror import BOX`)"


def newest_version(mirror_root: Path, distro: str, channel: str, provider: str) -> str | None:
    """The newest version of `<distro>-<channel>` the mirror has for `provider`, if any."""
    from coreos_lab.mirror.store import MirrorStore

    entry = MirrorStore(mirror_root).latest(box_name(distro, channel), provider)
    return entry.version if entry is not None else None
