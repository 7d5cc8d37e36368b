"""What `provider: libvirt` needs to know about this host: whether KVM really runs guests, where guests reach
the host, and whether libvirtd and the vagrant-libvirt plugin are there (`check_libvirt`, for doctor and preflight).

KVM is judged by running a guest, not by the presence of /dev/kvm: under some nested hypervisors /dev/kvm
opens fine, firmware even runs, and then a Linux kernel hangs. So the check boots an installed kernel under
`-accel kvm` with no root file system and waits (a few seconds) for its panic message on the serial port.
The answer is cached per host (kernel, QEMU build, /dev/kvm) because a failing check costs its timeout.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import platform
import re
import shutil
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from coreos_lab import proc
from coreos_lab.errors import CommandFailed, LabError, Timeout
from coreos_lab.fsutil import atomic_write_text
from coreos_lab.paths import cache_home
from coreos_lab.prerequisites import Check, DoctorContext, DoctorFinding

log = logging.getLogger(__name__)

# vagrant-libvirt's defaults (management_network_name / management_network_address).
MANAGEMENT_NETWORK_NAME = "vagrant-libvirt"
MANAGEMENT_NETWORK = "192.168.121.0/24"
DRIVERS = ("auto", "kvm", "qemu")
LIBVIRT_SOCKETS = ("/run/libvirt/libvirt-sock", "/run/libvirt/virtqemud-sock", "/var/run/libvirt/libvirt-sock")
QEMU = "qemu-system-x86_64"
KVM_DEVICE = Path("/dev/kvm")
# GitHub's hosted Ubuntu runners have /dev/kvm, but only root and group kvm may open it; GitHub's documented remedy
# (and the one CI jobs of Vagrant projects use) is a udev rule that opens it to every user.
KVM_UDEV_RULE = 'KERNEL=="kvm", GROUP="kvm", MODE="0666", OPTIONS+="static_node=kvm"'
KVM_ACCESS_FIX = (
    f"on a CI runner: echo '{KVM_UDEV_RULE}' | sudo tee /etc/udev/rules.d/99-kvm4all.rules && "
    "sudo udevadm control --reload-rules && sudo udevadm trigger --name-match=kvm; "
    "on your own machine: sudo usermod -aG kvm $USER, then log in again"
)
HASHICORP_VAGRANT = Path("/opt/vagrant/embedded")  # HashiCorp's package: Vagrant with a Ruby of its own
KVM_CHECK_SECONDS = 10.0
# What a booting kernel prints that proves guest code runs at speed (it panics: no root file system).
_KERNEL_PROGRESS = (b"Kernel panic", b"VFS: Cannot open root device", b"Run /init", b"Freeing unused kernel")


def management_gateway(network: str = MANAGEMENT_NETWORK) -> str:
    """The host's address on the management network, which is how guests reach it (libvirt NAT)."""
    try:
        net = ipaddress.ip_network(network, strict=False)
    except ValueError as exc:
        raise ValueError(f"{network!r} is not a network address (like {MANAGEMENT_NETWORK})") from exc
    return str(next(net.hosts()))


@dataclass(frozen=True)
class KvmCheck:
    usable: bool
    reason: str
    seconds: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _guest_kernel() -> Path | None:
    """An installed kernel image QEMU can boot directly (the running one first)."""
    boot = Path("/boot")
    preferred = boot / f"vmlinuz-{platform.release()}"
    if preferred.is_file() and os.access(preferred, os.R_OK):
        return preferred
    for candidate in sorted(boot.glob("vmlinuz-*"), reverse=True):
        if os.access(candidate, os.R_OK):
            return candidate
    return None


def _cache_file() -> Path:
    return cache_home() / "kvm-check.json"


def _cache_key(qemu: str, kernel: Path) -> str:
    parts = [platform.release(), kernel.name]
    for path in (Path(qemu), Path("/dev/kvm")):
        try:
            st = path.stat()
            parts.append(f"{path}:{st.st_ino}:{st.st_mtime_ns}")
        except OSError:
            parts.append(f"{path}:absent")
    return "|".join(parts)


def kvm_check(*, use_cache: bool = True, timeout: float = KVM_CHECK_SECONDS) -> KvmCheck:
    """Can KVM run a Linux guest here? Boots a kernel under KVM and watches its serial console."""
    dev = KVM_DEVICE
    if not dev.exists():
        return KvmCheck(False, "/dev/kvm does not exist (no KVM module, or KVM not exposed to this machine)")
    if not os.access(dev, os.R_OK | os.W_OK):
        return KvmCheck(False, "/dev/kvm is not readable and writable by this user (join the kvm group)")
    qemu = shutil.which(QEMU)
    if qemu is None:
        return KvmCheck(False, f"{QEMU} not found (install qemu-system-x86)")
    kernel = _guest_kernel()
    if kernel is None:
        return KvmCheck(False, "no readable kernel in /boot to test-boot under KVM")
    key = _cache_key(qemu, kernel)
    cache = _cache_file()
    if use_cache:
        try:
            cached = json.loads(cache.read_text())
            if cached.get("key") == key:
                return KvmCheck(bool(cached["usable"]), str(cached["reason"]), float(cached.get("seconds", 0)))
        except (OSError, ValueError, KeyError):
            pass
    result = _boot_under_kvm(qemu, kernel, timeout)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cache, json.dumps({"key": key, **result.as_dict()}))
    except OSError:
        pass  # a cache we cannot write only costs time
    return result


def _boot_under_kvm(qemu: str, kernel: Path, timeout: float, accel: str = "kvm") -> KvmCheck:
    with tempfile.TemporaryDirectory(prefix="lab-kvm-") as tmp:
        serial = Path(tmp) / "serial.txt"
        # panic=-1 reboots at once on the expected panic and -no-reboot turns that into QEMU exiting.
        argv = [
            qemu, "-accel", accel, "-machine", "pc", "-m", "128", "-display", "none", "-nodefaults",
            "-no-reboot", "-serial", f"file:{serial}", "-kernel", str(kernel),
            "-append", "console=ttyS0 panic=-1 root=/dev/nonexistent",
        ]  # fmt: skip
        started = time.monotonic()
        try:
            result = proc.run(argv, check=False, timeout=timeout)
        except Timeout:
            return KvmCheck(
                False,
                f"a Linux kernel made no progress under KVM within {timeout:g} s "
                "(nested virtualization that hangs guests); use the qemu driver",
                round(time.monotonic() - started, 1),
            )
        seconds = round(time.monotonic() - started, 1)
        text = serial.read_bytes() if serial.exists() else b""
        if any(marker in text for marker in _KERNEL_PROGRESS):
            return KvmCheck(True, "a Linux kernel boots under KVM", seconds)
        err = result.stderr.strip().splitlines()
        return KvmCheck(
            False, f"QEMU could not run a KVM guest: {err[-1] if err else f'exit {result.returncode}'}", seconds
        )


def resolve_driver(driver: str, kvm: KvmCheck | None = None) -> str:
    """`auto` → `kvm` where KVM runs guests, else `qemu` (software emulation: slow but works everywhere).
    `kvm`: the answer of a `kvm_check` already made (preflight's), else one is made here."""
    if driver != "auto":
        return driver
    return "kvm" if (kvm or kvm_check()).usable else "qemu"


def libvirt_socket() -> str | None:
    """The libvirt daemon's socket on this host, if one is listening there."""
    for path in LIBVIRT_SOCKETS:
        if Path(path).is_socket():
            return path
    return None


def vagrant_libvirt_plugin(env: dict[str, str] | None = None) -> str | None:
    """The installed vagrant-libvirt plugin version, or None (also when Vagrant itself is missing).

    `vagrant plugin list` costs ~1.5 s of Ruby start-up, so a found plugin is remembered, keyed by the files that
    change whenever the answer can: the vagrant executable and Vagrant's plugin registries (`_plugin_files`)."""
    vagrant = shutil.which("vagrant")
    if vagrant is None:
        return None
    key = _plugin_cache_key(vagrant, env)
    cache = cache_home() / "vagrant-libvirt-plugin.json"
    try:
        cached = json.loads(cache.read_text())
        if cached.get("key") == key and isinstance(cached.get("version"), str):
            return str(cached["version"])
    except (OSError, ValueError, AttributeError):
        pass
    try:
        out = proc.run([vagrant, "plugin", "list"], env=env, check=False, timeout=60).stdout
    except LabError:
        return None
    version = _libvirt_plugin_version(out)
    if version is not None:  # only a found plugin is remembered: a missing one is asked again each time
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(cache, json.dumps({"key": key, "version": version}))
        except OSError:
            pass  # a cache we cannot write only costs time
    return version


def _libvirt_plugin_version(plugin_list: str) -> str | None:
    for line in plugin_list.splitlines():
        if line.startswith("vagrant-libvirt"):
            return line.split("(", 1)[-1].split(",")[0].strip(") ") if "(" in line else "installed"
    return None


def _plugin_files(env: dict[str, str] | None) -> list[Path]:
    """Where Vagrant records its plugins: the user's `VAGRANT_HOME/plugins.json`, HashiCorp's package's
    `embedded/plugins.json`, and Debian's `/usr/share/vagrant-plugins/plugins.d/*.json` (one file per packaged
    plugin). Installing or removing a plugin rewrites one of them."""
    environ = env if env is not None else os.environ
    home = Path(environ.get("VAGRANT_HOME") or Path.home() / ".vagrant.d")
    debian = Path("/usr/share/vagrant-plugins/plugins.d")
    packaged = sorted(debian.glob("*.json")) if debian.is_dir() else []
    return [home / "plugins.json", HASHICORP_VAGRANT / "plugins.json", debian, *packaged]


def _plugin_cache_key(vagrant: str, env: dict[str, str] | None) -> str:
    parts = []
    for path in [Path(vagrant), Path(os.path.realpath(vagrant)), *_plugin_files(env)]:
        try:
            st = path.stat()
            parts.append(f"{path}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}")
        except OSError:
            parts.append(f"{path}:absent")
    return "|".join(parts)


# -- the management network ------------------------------------------------------------------------------------
# vagrant-libvirt creates its management network when it is missing, and its dnsmasq then pings every address
# before offering it: the first DISCOVER of a new guest goes unanswered for ~3 s, and with several guests
# booting at once the pings run one after another (measured: offers at +3 s, +6 s, +9 s for 3 guests). A
# network that `lab up` defines itself, the same apart from dnsmasq's `no-ping`, answers at once;
# vagrant-libvirt uses an existing network of that name as it is. Best effort: where virsh is missing or
# fails, vagrant-libvirt creates the network as before.
LIBVIRT_URI = "qemu:///system"  # vagrant-libvirt's default connection


def management_network_xml(network: str, name: str = MANAGEMENT_NETWORK_NAME) -> str:
    """libvirt XML for the management network as vagrant-libvirt defines it (NAT, DHCP over the whole
    subnet), plus dnsmasq's `no-ping`."""
    net = ipaddress.ip_network(network, strict=False)
    gateway, first, last = net.network_address + 1, net.network_address + 2, net.broadcast_address - 1
    return (
        "<network xmlns:dnsmasq='http://libvirt.org/schemas/network/dnsmasq/1.0'>\n"
        f"  <name>{name}</name>\n"
        "  <forward mode='nat'/>\n"
        "  <bridge stp='on' delay='0'/>\n"
        f"  <ip address='{gateway}' netmask='{net.netmask}'>\n"
        f"    <dhcp><range start='{first}' end='{last}'/></dhcp>\n"
        "  </ip>\n"
        "  <dnsmasq:options><dnsmasq:option value='no-ping'/></dnsmasq:options>\n"
        "</network>\n"
    )


def _virsh(*args: str) -> proc.CommandResult:
    return proc.run(["virsh", "-q", "-c", LIBVIRT_URI, *args], check=False, timeout=60)


def create_management_network(network: str, name: str = MANAGEMENT_NETWORK_NAME) -> str | None:
    """Define and start the management network unless one of that name exists; the UUID of the network
    created, or None (it existed, or virsh could not create it: vagrant-libvirt then does)."""
    try:
        if _virsh("net-uuid", name).succeeded:
            return None
        with tempfile.NamedTemporaryFile("w", suffix=".xml", prefix="lab-network-") as xml:
            xml.write(management_network_xml(network, name))
            xml.flush()
            if not _virsh("net-define", xml.name).succeeded:
                return None  # e.g. another `lab up` defined it a moment ago
        uuid = _virsh("net-uuid", name).stdout.strip()
        if not _virsh("net-start", name).succeeded:
            _virsh("net-undefine", name)
            return None
        return uuid or None
    except LabError as exc:  # virsh missing or hanging
        log.debug("management network not pre-created: %s", exc)
        return None


def remove_management_network(uuid: str, name: str = MANAGEMENT_NETWORK_NAME) -> bool:
    """Stop and undefine the management network `create_management_network` made, unless it is gone, was
    replaced, or still has guests attached (another lab's). True when removed."""
    try:
        current = _virsh("net-uuid", name)
        if not current.succeeded or current.stdout.strip() != uuid:
            return False
        live = _virsh("net-dumpxml", name).stdout
        if re.search(r"<network\b[^>]*\bconnections=['\"][1-9]", live):
            return False
        _virsh("net-destroy", name)
        return _virsh("net-undefine", name).succeeded
    except LabError as exc:
        log.debug("management network not removed: %s", exc)
        return False


# -- failure drills -----------------------------------------------------------------------------------------------


def set_private_link(domain: str, up: bool) -> str:
    """Plug the running domain's NICs on the lab's own networks (every one but the management network's) in or
    out, live (`virsh domif-setlink`): the guest loses its peers, while SSH, over the management network, stays.
    Says what it did."""
    listing = _virsh("domiflist", domain)  # -q: rows of Interface, Type, Source, Model, MAC
    if not listing.succeeded:
        raise CommandFailed(listing.argv, listing.returncode, listing.stderr)
    rows = [line.split() for line in listing.stdout.splitlines()]
    macs = [row[4] for row in rows if len(row) == 5 and row[2] != MANAGEMENT_NETWORK_NAME]
    if not macs:
        raise LabError(f"libvirt domain {domain} has no NIC besides the management network's:\n{listing.stdout}")
    state = "up" if up else "down"
    for mac in macs:
        result = _virsh("domif-setlink", domain, mac, state)
        if not result.succeeded:
            raise CommandFailed(result.argv, result.returncode, result.stderr)
    return f"libvirt link {state} on {', '.join(macs)} (virsh domif-setlink)"


# -- doctor -------------------------------------------------------------------------------------------------------


def check_libvirt(ctx: DoctorContext) -> Iterable[DoctorFinding]:
    """libvirtd listening, the vagrant-libvirt plugin, and whether KVM really runs guests (else: qemu driver)."""
    socket_path = libvirt_socket()
    if socket_path is None:
        yield DoctorFinding(
            "libvirtd",
            "fail",
            f"no libvirt daemon socket ({', '.join(LIBVIRT_SOCKETS[:2])})",
            "install libvirt-daemon-system and start libvirtd (`systemctl start libvirtd`, or `libvirtd -d`)",
        )
    else:
        yield DoctorFinding("libvirtd", "ok", f"libvirt daemon listening at {socket_path}")
    plugin = vagrant_libvirt_plugin()
    if plugin is None:
        yield DoctorFinding(
            "vagrant-libvirt", "fail", "the vagrant-libvirt plugin is not installed", plugin_install_fix()
        )
    else:
        yield DoctorFinding("vagrant-libvirt", "ok", f"vagrant-libvirt {plugin}")
    kvm = ctx.facts["kvm"] = kvm_check()  # `lab up` resolves libvirt.driver auto from it
    if kvm.usable:
        yield DoctorFinding("kvm", "ok", kvm.reason)
    elif KVM_DEVICE.exists() and not os.access(KVM_DEVICE, os.R_OK | os.W_OK):
        yield DoctorFinding(
            "kvm",
            "warn",
            f"{KVM_DEVICE} is there, but this user may not open it: guests would run under software emulation "
            "(libvirt.driver auto renders qemu), many times slower",
            KVM_ACCESS_FIX,
        )
    else:
        yield DoctorFinding(
            "kvm",
            "warn",
            f"KVM cannot run guests here ({kvm.reason}); libvirt.driver auto renders qemu: software emulation, "
            "slower but working",
            "set libvirt.driver: qemu in lab.yaml to say so explicitly",
        )


def plugin_install_fix() -> str:
    """How to install vagrant-libvirt for the Vagrant this host has: Debian's and Ubuntu's packaged Vagrant has it
    as a package; HashiCorp's builds the plugin into its own Ruby, against libvirt's headers."""
    hashicorp = "sudo apt-get install -y libvirt-dev && vagrant plugin install vagrant-libvirt"
    if HASHICORP_VAGRANT.is_dir():
        return hashicorp
    return f"sudo apt-get install -y vagrant-libvirt (with HashiCorp's Vagrant: {hashicorp})"


def defined_networks() -> list[tuple[str, ipaddress.IPv4Network | ipaddress.IPv6Network]] | None:
    """(name, subnet) of every network libvirt's system connection defines (active or not), one row per address;
    None when libvirt cannot be asked."""
    import xml.etree.ElementTree as ET

    try:
        listing = _virsh("net-list", "--all", "--name")
        if not listing.succeeded:
            return None
        found: list[tuple[str, ipaddress.IPv4Network | ipaddress.IPv6Network]] = []
        for name in filter(None, (line.strip() for line in listing.stdout.splitlines())):
            xml = _virsh("net-dumpxml", name)
            if not xml.succeeded:
                continue
            for ip in ET.fromstring(xml.stdout).iter("ip"):
                mask = ip.get("netmask") or ip.get("prefix")
                if ip.get("address") and mask:
                    found.append((name, ipaddress.ip_network(f"{ip.get('address')}/{mask}", strict=False)))
        return found
    except (LabError, ET.ParseError, ValueError) as exc:
        log.debug("libvirt networks not read: %s", exc)
        return None


CHECKS: tuple[Check, ...] = (check_libvirt,)
