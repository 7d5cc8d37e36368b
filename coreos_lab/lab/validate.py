"""Checks of lab.yaml's values: every problem is collected, then raised as one `BadInput` naming, per problem,
the file (or environment variable / flag), the key path, the value and what is allowed — before anything is
written. The checks of lists and mappings build the typed values they check.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from coreos_lab.distros import DISTROS
from coreos_lab.errors import BadInput
from coreos_lab.lab.model import DropIn, ForwardedPort, Machine, SharedFolder, Unit
from coreos_lab.lab.settings import (
    CONFIG_FILE,
    MAX_NODES,
    SECTIONS,
    SETTINGS,
    SETTINGS_BY_PATH,
    STRUCTURED,
    TOP_LEVEL,
    Setting,
    parse_subnet,
)
from coreos_lab.paths import expand_user, unknown_home
from coreos_lab.urls import is_http_url
from coreos_lab.vagrant.providers import PROVIDERS

UNIT_COMMANDS = ("start", "stop", "restart", "reload", "try-restart", "reload-or-restart", "reload-or-try-restart")
UNIT_SUFFIXES = (".service", ".socket", ".timer", ".mount", ".automount", ".path", ".target", ".swap", ".device")

_PREFIX_RE = re.compile(r"^[a-z][a-z0-9-]{0,40}$")
_META_KEY_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
_META_VALUE_RE = re.compile(r"^[A-Za-z0-9_./:-]*$")  # fleet metadata is `k=v,k=v`: no commas or '='
_UNIT_NAME_RE = re.compile(r"^[A-Za-z0-9:_.@-]+$")


class Problems:
    """Collects validation problems; raised together so the user fixes them in one go.

    Only the first `SHOWN` are spelled out (a message may be a callable, made only then): a file of 30 000 unknown
    keys gets a readable error at once, not 30 000 lines and a did-you-mean for each.
    """

    SHOWN = 50

    def __init__(self, origin: str):
        self.origin = origin
        self.count = 0
        self.items: list[str] = []

    def add(self, where: str, message: str | Callable[[], str]) -> None:
        self.count += 1
        if len(self.items) < self.SHOWN:
            self.items.append(f"{where}: {message if isinstance(message, str) else message()}")

    def raise_if_any(self) -> None:
        if self.count:
            lines = "\n".join(f"  {item}" for item in self.items)
            if self.count > len(self.items):
                lines += f"\n  … and {self.count - len(self.items)} more"
            count = f"{self.count} problems" if self.count > 1 else "1 problem"
            hint = f"fix {self.origin} (or the environment variable / flag named) and try again"
            raise BadInput(f"invalid configuration ({count}):\n{lines}", hint=hint)


def flatten(doc: Mapping[str, Any], problems: Problems) -> dict[str, Any]:
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
                    problems.add(f"{CONFIG_FILE}: {path}", partial(_unknown, str(sub), _section_keys(key)))
        elif key in SETTINGS_BY_PATH or key in STRUCTURED:
            flat[key] = value
        else:
            problems.add(f"{CONFIG_FILE}: {key}", partial(_unknown, key, TOP_LEVEL))
    return flat


def _section_keys(section: str) -> list[str]:
    return sorted(p.split(".", 1)[1] for p in [*SETTINGS_BY_PATH, *STRUCTURED] if p.startswith(section + "."))


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


def check_type(setting: Setting, value: Any, where: str, problems: Problems) -> Any:
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


def parse_env(setting: Setting, raw: str, where: str, problems: Problems) -> Any:
    text = raw.strip()
    if setting.optional and text.lower() in ("", "none", "null"):
        return None
    if setting.kind is bool:
        if text.lower() in _TRUE | _FALSE:
            return text.lower() in _TRUE
        problems.add(where, f"{raw!r} is not a boolean (true/false, yes/no, 1/0)")
        return None
    if setting.kind is int:
        # ASCII digits only: int() would also take "٣" and "1_000", which nobody means as a setting.
        if not re.fullmatch(r"[+-]?[0-9]+", text):
            problems.add(where, f"{raw!r} is not an integer")
            return None
        return int(text)
    return text


def check_scalars(
    values: dict[str, Any], where: Callable[[str], str], problems: Problems, *, require_version: bool
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
    if distro in DISTROS and channel not in (channels := DISTROS[distro].channels):
        problems.add(where("channel"), f"{channel!r} is not a {distro} channel; choose one of {', '.join(channels)}")
    if values["version"] is not None:
        from coreos_lab.mirror.store import VERSION_RE

        if not VERSION_RE.fullmatch(str(values["version"])):
            problems.add(where("version"), f"{values['version']!r} is not a box version (e.g. 3815.2.0)")
    if not _PREFIX_RE.fullmatch(str(values["name_prefix"])):
        problems.add(
            where("name_prefix"),
            f"{values['name_prefix']!r} is not allowed; use lowercase letters, digits and '-', starting with a letter",
        )
    for path in ("mirror.url", "discovery.url"):
        if not is_http_url(str(values[path]), base=True):
            problems.add(where(path), f"{values[path]!r} is not an http(s) base URL such as http://127.0.0.1:8080")
        elif urlsplit(str(values[path])).port == 0:  # a server cannot be reached at port 0
            problems.add(where(path), f"{values[path]!r} names port 0; use the port the server listens at")
    root = values["mirror.root"]
    if root is not None and expand_user(str(root)) is None:
        problems.add(where("mirror.root"), unknown_home(str(root)))
    _check_etcd_image(values, where, problems)
    guest = values["mirror.guest_host"]
    if guest is not None and not re.match(r"^[A-Za-z0-9.-]+$|^\[[0-9A-Fa-f:]+\]$", str(guest)):
        problems.add(where("mirror.guest_host"), f"{guest!r} is not a host name or IP address")
    management = parse_subnet(str(values["libvirt.management_network"]))
    if management is None:
        problems.add(
            where("libvirt.management_network"),
            f"{values['libvirt.management_network']!r} is not an IPv4 network such as 192.168.121.0/24",
        )
    elif values["provider"] in PROVIDERS and PROVIDERS[values["provider"]].management_network:
        private = parse_subnet(str(values["subnet"]))
        if private is not None and private.overlaps(management):
            problems.add(
                where("libvirt.management_network"),
                f"{management} overlaps subnet {private}; the management network and the private network must differ",
            )
    members, nodes = values["etcd.members"], values["nodes"]
    # Only against a valid node count: "1 to 0" would only repeat the node-count problem.
    if members is not None and isinstance(nodes, int) and 1 <= nodes <= MAX_NODES and members > nodes:
        problems.add(where("etcd.members"), f"{members} etcd members but only {nodes} nodes; allowed: 1 to {nodes}")


def _check_etcd_image(values: dict[str, Any], where: Callable[[str], str], problems: Problems) -> None:
    """etcd.image only where etcd runs from an image, as a valid reference; a mirror the guests pull it from must
    be a registry Docker can find: `/v2/` at the root of a host:port."""
    distro = DISTROS.get(values["distro"])
    image = values["etcd.image"]
    if distro is None:
        return
    if image is not None and distro.etcd_image is None:
        problems.add(
            where("etcd.image"), f"{image!r} is not used: {distro.title} runs etcd on the host, not from an image"
        )
    elif image is not None:
        from coreos_lab.mirror.images.reference import parse_reference

        try:
            parse_reference(str(image))
        except BadInput as exc:
            problems.add(where("etcd.image"), f"{exc.message} (e.g. {distro.etcd_image})")
    if not is_http_url(str(values["mirror.url"]), base=True):
        return  # reported as such
    mirror_path = urlsplit(str(values["mirror.url"])).path.strip("/")
    if distro.etcd_image is not None and values["etcd.image_source"] == "mirror" and mirror_path:
        problems.add(
            where("mirror.url"),
            f"{values['mirror.url']!r} has a path (/{mirror_path}); {distro.title} guests pull etcd's image from the "
            "mirror as a registry, which Docker finds only at the root of a host:port (/v2/): serve the mirror "
            "there, or set etcd.image_source: upstream",
        )


def build_nodes(
    values: dict[str, Any], file_values: dict[str, Any], where: Callable[[str], str], problems: Problems
) -> tuple[Machine, ...]:
    subnet = parse_subnet(str(values["subnet"]))
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

    nodes: list[Machine] = []
    taken: dict[ipaddress.IPv4Address, str] = {}
    reserved = {subnet.network_address, subnet.broadcast_address, subnet.network_address + 1}
    for i, name in enumerate(names, start=1):
        ip = subnet.network_address + 100 + i
        settings = per_machine.get(name) or {}
        key = f"{CONFIG_FILE}: machines.{name}"
        if not isinstance(settings, dict):
            problems.add(key, f"expected a mapping with ip and/or metadata, found {_show(settings)}")
            settings = {}
        for unknown in sorted(set(settings) - {"ip", "metadata"}, key=str):
            problems.add(f"{key}.{unknown}", partial(_unknown, str(unknown), ["ip", "metadata"]))
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
        own = build_metadata(settings.get("metadata"), f"machines.{name}.metadata", problems)
        nodes.append(Machine(i, name, str(ip), member, _merge_metadata(tuple(metadata), own)))
    return tuple(nodes)


def build_metadata(raw: Any, path: str, problems: Problems) -> tuple[tuple[str, str], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        problems.add(f"{CONFIG_FILE}: {path}", f"expected a mapping of key: value, found {_show(raw)}")
        return ()
    items: list[tuple[str, str]] = []
    for key, value in raw.items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        if not _META_KEY_RE.fullmatch(str(key)) or isinstance(value, dict | list) or not _META_VALUE_RE.fullmatch(text):
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


def with_fleet_metadata(node: Machine, common: tuple[tuple[str, str], ...]) -> Machine:
    """Precedence per machine: role ← fleet.metadata ← machines.<name>.metadata."""
    role = node.metadata[:1]
    own = node.metadata[1:]
    return replace(node, metadata=_merge_metadata(_merge_metadata(role, common), own))


def _has_fleet_metadata(file_values: dict[str, Any], path: str) -> bool:
    value = file_values.get(path)
    if path == "machines":
        return isinstance(value, dict) and any(isinstance(v, dict) and v.get("metadata") for v in value.values())
    return bool(value)


def check_fleet_metadata(values: dict[str, Any], file_values: dict[str, Any], problems: Problems) -> None:
    """Fleet metadata only on a distro that runs fleet."""
    distro = DISTROS.get(values["distro"])
    if distro is None or distro.fleet:
        return
    with_fleet = " or ".join(d.name for d in DISTROS.values() if d.fleet)
    for path in ("fleet.metadata", "machines"):
        if _has_fleet_metadata(file_values, path):
            problems.add(
                f"{CONFIG_FILE}: {path}", f"{distro.title} has no fleet; remove the metadata or use distro {with_fleet}"
            )


def _check_keys(item: dict[str, Any], allowed: tuple[str, ...], where: str, problems: Problems) -> None:
    for key in sorted(set(item) - set(allowed), key=str):
        problems.add(f"{where}.{key}", partial(_unknown, str(key), list(allowed)))


def _port(value: Any, where: str, problems: Problems) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        problems.add(where, f"{_show(value)} is not a port number (1 to 65535)")
        return 0
    return value


def build_ports(raw: Any, nodes: tuple[Machine, ...], problems: Problems) -> tuple[ForwardedPort, ...]:
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
        if node is not None and (not isinstance(node, str) or node not in names):
            problems.add(f"{where}.node", f"{_show(node)} is not a machine of this lab ({', '.join(sorted(names))})")
            node = None
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


def build_folders(raw: Any, lab_dir: Path, problems: Problems) -> tuple[SharedFolder, ...]:
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
        host = expand_user(item["host"])
        if host is None:
            problems.add(f"{where}.host", unknown_home(item["host"]))
        elif not (lab_dir / host).is_dir():
            problems.add(
                f"{where}.host", f"{item['host']!r} is not a directory (relative paths are relative to the lab)"
            )
        if not item["guest"].startswith("/"):
            problems.add(f"{where}.guest", f"{item['guest']!r} is not an absolute path")
        folders.append(SharedFolder(item["host"], item["guest"]))
    return tuple(folders)


def _text(value: Any, where: str, problems: Problems) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        problems.add(where, f"{_show(value)} is not text")
        return None
    return value if value.endswith("\n") else value + "\n"


def build_units(raw: Any, nodes: tuple[Machine, ...], problems: Problems) -> tuple[Unit, ...]:
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
        if not _UNIT_NAME_RE.fullmatch(name) or not name.endswith(UNIT_SUFFIXES):
            problems.add(f"{where}.name", f"{name!r} is not a systemd unit name (e.g. hello.service)")
        command = item.get("command")
        if command is not None and command not in UNIT_COMMANDS:
            problems.add(f"{where}.command", f"{command!r} is not allowed; choose one of {', '.join(UNIT_COMMANDS)}")
        enable = item.get("enable")
        if enable is not None and not isinstance(enable, bool):
            problems.add(f"{where}.enable", f"{_show(enable)} is not true or false")
        drop_ins: list[DropIn] = []
        drops = item.get("drop_ins") or []
        if not isinstance(drops, list):
            problems.add(
                f"{where}.drop_ins", f"expected a list of {{name: NAME.conf, content: TEXT}}, found {_show(drops)}"
            )
            drops = []
        for j, drop in enumerate(drops):
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
