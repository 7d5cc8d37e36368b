"""`lab doctor`: every prerequisite of a lab checked at once, each finding ok / warn / fail with a fix.

Checks are plain functions `check(ctx) -> Iterable[Finding]`. `COMMON_CHECKS` run for every lab;
`PROVIDER_CHECKS[provider]` add what a provider needs (another provider registers its own list there).
The same provider checks serve `lab up`'s preflight, so the two never disagree.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import re
import shutil
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from coreos_lab import proc
from coreos_lab.lab.plan import LabPlan

Level = Literal["ok", "warn", "fail"]


@dataclass(frozen=True)
class Finding:
    check: str
    level: Level
    detail: str
    fix: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"check": self.check, "level": self.level, "detail": self.detail, "fix": self.fix}


@dataclass
class DoctorReport:
    lab_dir: Path | None
    provider: str
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(f.level == "fail" for f in self.findings)

    def as_dict(self) -> dict[str, Any]:
        return {
            "lab_dir": str(self.lab_dir) if self.lab_dir else None,
            "provider": self.provider,
            "ok": self.ok,
            "findings": [f.as_dict() for f in self.findings],
        }


@dataclass
class DoctorContext:
    """What the checks look at. Without a lab, only the machine-wide checks have something to say."""

    plan: LabPlan | None
    provider: str
    mirror_root: Path
    # Filled by earlier checks for later ones (e.g. the Vagrant version for known-bad provider pairs).
    facts: dict[str, Any] = field(default_factory=dict)


Check = Callable[[DoctorContext], Iterable[Finding]]


# -- machine-wide ------------------------------------------------------------------------------------------------


def check_vagrant(ctx: DoctorContext) -> Iterable[Finding]:
    from coreos_lab.errors import LabError
    from coreos_lab.vagrant.adapter import INSTALL_HINT, Vagrant

    if shutil.which("vagrant") is None:
        yield Finding("vagrant", "fail", "vagrant not found on PATH", INSTALL_HINT)
        return
    try:
        version = Vagrant(ctx.plan.lab_dir if ctx.plan else Path.cwd()).version()
    except LabError as exc:
        yield Finding("vagrant", "fail", exc.message, "reinstall Vagrant")
        return
    ctx.facts["vagrant_version"] = version
    yield Finding("vagrant", "ok", f"Vagrant {version}")


def check_virtualization(ctx: DoctorContext) -> Iterable[Finding]:
    """VT-x/AMD-V must reach the machine, or guests hang at boot and Vagrant reports an SSH timeout."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    if flags & {"vmx", "svm"}:
        yield Finding("virtualization", "ok", "hardware virtualization (VT-x/AMD-V) is available")
    else:
        yield Finding(
            "virtualization",
            "warn",
            "no hardware virtualization (VT-x/AMD-V) visible to this machine: 64-bit guests will not boot, and "
            'Vagrant ends with "Timed out while waiting for the machine to boot" / SSH connection timeout',
            "enable VT-x/AMD-V in the BIOS/UEFI (or nested virtualization for a VM host)",
        )


def check_subnet(ctx: DoctorContext) -> Iterable[Finding]:
    """The lab's private network must not overlap a route of another interface (docker0's 172.17.0.0/16
    swallows coreos-vagrant's 172.17.8.0/24: host-only traffic then goes to Docker's bridge)."""
    if ctx.plan is None or ctx.plan.subnet is None:
        return
    subnet = ctx.plan.subnet
    routes = interface_routes()
    if routes is None:
        yield Finding("subnet", "warn", f"could not read the routing table to check {subnet}", "install iproute2")
        return
    clashes = [
        (net, dev)
        for net, dev in routes
        if net.version == subnet.version and net.overlaps(subnet) and not _is_provider_interface(dev)
    ]
    if clashes:
        net, dev = clashes[0]
        yield Finding(
            "subnet",
            "fail",
            f"lab subnet {subnet} overlaps {net} on {dev}: traffic to the nodes would go to {dev}",
            f"choose another `subnet` in lab.yaml, or move {dev} "
            + ('(Docker: "bip" in /etc/docker/daemon.json)' if dev.startswith("docker") else "to another range"),
        )
    else:
        yield Finding("subnet", "ok", f"lab subnet {subnet} clashes with no interface route")


def interface_routes() -> list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]] | None:
    """(network, device) of every non-default route, from `ip -j route`; None when it cannot be read."""
    if shutil.which("ip") is None:
        return None
    result = proc.run(["ip", "-j", "route", "show", "table", "main"], check=False, timeout=10)
    if not result.succeeded:
        return None
    try:
        rows = json.loads(result.stdout or "[]")
    except json.JSONDecodeError:
        return None
    routes = []
    for row in rows:
        dst = row.get("dst", "")
        if not dst or dst == "default":
            continue
        try:
            routes.append((ipaddress.ip_network(dst, strict=False), str(row.get("dev", "?"))))
        except ValueError:
            continue
    return routes


def _is_provider_interface(dev: str) -> bool:
    # A provider's own host-only network for the lab subnet is expected, not a clash.
    return dev.startswith(("vboxnet", "virbr"))


def check_mirror(ctx: DoctorContext) -> Iterable[Finding]:
    """The mirror answers at the lab's URL, or `lab up` can serve the local store itself; the box is in it."""
    if ctx.plan is None:
        return
    plan = ctx.plan
    metadata = fetch_box_metadata(plan)
    if metadata is not None:
        yield Finding("mirror", "ok", f"mirror reachable at {plan.mirror_url}")
        offered = {
            (v.get("version"), p.get("name")) for v in metadata.get("versions", []) for p in v.get("providers", [])
        }
        where = plan.metadata_url
    elif plan.mirror_is_local:
        free = port_free(plan.mirror_host, plan.mirror_port)
        yield Finding(
            "mirror",
            "ok" if free else "fail",
            f"no mirror answers at {plan.mirror_url}; `lab up` serves {ctx.mirror_root} there itself"
            if free
            else f"port {plan.mirror_port} is taken by something that is not a lab mirror",
            None if free else f"stop what listens on port {plan.mirror_port}, or change the mirror URL in lab.yaml",
        )
        offered = local_box_versions(ctx.mirror_root, plan.box_name)
        where = str(ctx.mirror_root)
    else:
        yield Finding(
            "mirror",
            "fail",
            f"mirror not reachable at {plan.mirror_url}",
            "start it there (`lab mirror serve`), or point lab.yaml at a local one",
        )
        return
    wanted = f"{plan.box_name} {plan.box_version or '(any version)'} ({plan.provider})"
    if any((plan.box_version is None or v == plan.box_version) and p == plan.provider for v, p in offered):
        yield Finding("mirror-box", "ok", f"{wanted} is in the mirror ({where})")
    else:
        yield Finding(
            "mirror-box",
            "fail",
            f"{wanted} is not in the mirror ({where})",
            f"lab mirror fetch --distro {plan.distro} ... (or `lab mirror import` a box downloaded elsewhere)",
        )


def vagrant_has_box(plan: LabPlan) -> bool:
    """Whether Vagrant already has the lab's box (name, version, provider): `vagrant box list`."""
    from coreos_lab.vagrant.adapter import Vagrant

    vagrant = Vagrant(plan.lab_dir, provider=plan.provider, keep_logs=False)
    return vagrant.has_box(plan.box_name, plan.box_version, plan.provider)


def check_vagrant_box(ctx: DoctorContext) -> Iterable[Finding]:
    from coreos_lab.errors import LabError

    if ctx.plan is None or "vagrant_version" not in ctx.facts:
        return
    plan = ctx.plan
    try:
        present = vagrant_has_box(plan)
    except LabError as exc:
        yield Finding("vagrant-box", "warn", f"could not list Vagrant's boxes: {exc.message}")
        return
    wanted = f"{plan.box_name} {plan.box_version or ''} ({plan.provider})".replace("  ", " ")
    if present:
        yield Finding("vagrant-box", "ok", f"{wanted} is installed in Vagrant")
    else:
        yield Finding("vagrant-box", "ok", f"{wanted} is not in Vagrant yet: `lab up` adds it from the mirror")


def check_ports(ctx: DoctorContext) -> Iterable[Finding]:
    if ctx.plan is None or not ctx.plan.host_ports:
        return
    taken = [p for p in ctx.plan.host_ports if not port_free("127.0.0.1", p)]
    if taken:
        yield Finding(
            "ports",
            "fail",
            f"forwarded host port(s) in use: {', '.join(map(str, taken))}",
            "stop what listens there, or change forwarded_ports in lab.yaml",
        )
    else:
        yield Finding("ports", "ok", f"forwarded host ports free: {', '.join(map(str, ctx.plan.host_ports))}")


# -- VirtualBox ---------------------------------------------------------------------------------------------------

# Where Vagrant's VirtualBox driver table lives (Debian's package, HashiCorp's installer): the series it lists
# are the only ones it can drive; any other makes `vagrant up` fail with VirtualBoxInvalidVersion.
VAGRANT_GEM_GLOBS = (
    "/usr/share/rubygems-integration/all/gems/vagrant-{version}",
    "/usr/lib/ruby/vendor_ruby/vagrant-{version}",
    "/opt/vagrant/embedded/gems/gems/vagrant-{version}",
    "/opt/vagrant/embedded/gems/{version}/gems/vagrant-{version}",
)


def check_virtualbox(ctx: DoctorContext) -> Iterable[Finding]:
    probe = probe_virtualbox()
    if probe is None:
        yield Finding(
            "virtualbox",
            "fail",
            "VirtualBox not found: VBoxManage is not on PATH",
            "install VirtualBox (virtualbox.org; Debian's Vagrant 2.3.4 needs VirtualBox < 7.1), "
            "or use `provider: libvirt` in lab.yaml",
        )
        return
    found, said = probe
    if "vboxdrv" in said:
        # VBoxManage answers, but no VM can start until the kernel driver is built and loaded.
        yield Finding(
            "virtualbox",
            "fail",
            f"VirtualBox {found} is installed but its kernel module (vboxdrv) is not loaded",
            "run `sudo /sbin/vboxconfig` (install the kernel headers first; on Secure Boot, sign the module)",
        )
        return
    yield Finding("virtualbox", "ok", f"VirtualBox {found}")
    ctx.facts["virtualbox_version"] = found
    vagrant_version = ctx.facts.get("vagrant_version")
    if vagrant_version:
        clash = known_bad_pair(vagrant_version, found)
        if clash:
            yield Finding(
                "virtualbox-vagrant",
                "fail",
                clash,
                "install a VirtualBox release this Vagrant supports, or a newer Vagrant",
            )
        else:
            yield Finding("virtualbox-vagrant", "ok", f"Vagrant {vagrant_version} supports VirtualBox {found}")


# Since VirtualBox 6.1.28, host-only networks on Linux/macOS may only use the ranges listed in
# /etc/vbox/networks.conf (`* 10.0.0.0/8 …` lines), 192.168.56.0/21 when it does not exist; any other lab
# subnet (coreos-vagrant's 172.17.8.0/24 included) fails `vagrant up` after the VM was imported.
VBOX_NETWORKS_CONF = Path("/etc/vbox/networks.conf")
VBOX_DEFAULT_HOSTONLY = "192.168.56.0/21"


def hostonly_ranges(conf_text: str | None) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """The host-only ranges VirtualBox allows, from the text of networks.conf (None: the file is absent)."""
    if conf_text is None:
        return [ipaddress.ip_network(VBOX_DEFAULT_HOSTONLY)]
    ranges = []
    for line in conf_text.splitlines():
        words = line.split()
        if words[:1] == ["*"]:
            for word in words[1:]:
                with contextlib.suppress(ValueError):
                    ranges.append(ipaddress.ip_network(word, strict=False))
    return ranges


def check_virtualbox_hostonly(ctx: DoctorContext) -> Iterable[Finding]:
    found = ctx.facts.get("virtualbox_version")
    if ctx.plan is None or ctx.plan.subnet is None or not found or tuple(_numbers(found)) < (6, 1, 28):
        return
    subnet = ctx.plan.subnet
    try:
        conf: str | None = VBOX_NETWORKS_CONF.read_text()
    except FileNotFoundError:
        conf = None
    except OSError as exc:
        yield Finding("virtualbox-network", "warn", f"cannot read {VBOX_NETWORKS_CONF}: {exc.strerror}")
        return
    allowed = hostonly_ranges(conf)
    if any(subnet.version == net.version and subnet.subnet_of(net) for net in allowed):
        yield Finding("virtualbox-network", "ok", f"VirtualBox allows host-only network {subnet}")
        return
    shown = ", ".join(map(str, allowed)) or "none"
    yield Finding(
        "virtualbox-network",
        "fail",
        f"VirtualBox {found} allows host-only networks only in {shown} ({VBOX_NETWORKS_CONF}); "
        f"the lab subnet {subnet} would fail `vagrant up`",
        f"add the line `* {subnet}` to {VBOX_NETWORKS_CONF}, or choose a `subnet` inside {shown} in lab.yaml",
    )


def probe_virtualbox() -> tuple[str, str] | None:
    """(version, everything VBoxManage said), or None when it is not on PATH or does not answer."""
    if shutil.which("VBoxManage") is None:
        return None
    result = proc.run(["VBoxManage", "--version"], check=False, timeout=30)
    lines = [line for line in result.stdout.strip().splitlines() if line and not line.startswith("WARNING")]
    return (lines[-1], result.stdout + result.stderr) if result.succeeded and lines else None


def known_bad_pair(vagrant_version: str, virtualbox_version: str) -> str | None:
    """Why this Vagrant cannot drive this VirtualBox, or None: the packaged Vagrant's own declaration
    (dpkg `Breaks:`, e.g. Debian's 2.3.4 breaks virtualbox >= 7.1), then the installed Vagrant's driver table."""
    vbox = _numbers(virtualbox_version)
    breaks = debian_breaks("vagrant", "virtualbox")
    if breaks and _satisfies(vbox, *breaks):
        return (
            f"Vagrant {vagrant_version} (Debian package) declares it breaks VirtualBox {breaks[0]} {breaks[1]}; "
            f"found VirtualBox {virtualbox_version}"
        )
    series = supported_virtualbox_series(vagrant_version)
    if series and ".".join(map(str, vbox[:2])) not in series:
        return (
            f"Vagrant {vagrant_version} drives VirtualBox {series[0]}–{series[-1]} only; "
            f"found VirtualBox {virtualbox_version}"
        )
    return None


def supported_virtualbox_series(vagrant_version: str) -> list[str]:
    """The VirtualBox series ("7.0", …) the installed Vagrant has drivers for; empty when not found."""
    for pattern in VAGRANT_GEM_GLOBS:
        meta = Path(pattern.format(version=vagrant_version)) / "plugins/providers/virtualbox/driver/meta.rb"
        try:
            text = meta.read_text()
        except OSError:
            continue
        series = re.findall(r'"(\d+\.\d+)"\s*=>\s*Version_', text)
        return sorted(series, key=lambda v: tuple(map(int, v.split("."))))
    return []


def debian_breaks(package: str, other: str) -> tuple[str, str] | None:
    """(operator, version) of `package`'s dpkg `Breaks:` relation on `other`, if dpkg knows one."""
    if shutil.which("dpkg-query") is None:
        return None
    result = proc.run(["dpkg-query", "-W", "-f=${Breaks}", package], check=False, timeout=30)
    if not result.succeeded:
        return None
    for relation in result.stdout.split(","):
        match = re.match(rf"\s*{re.escape(other)}\s*\(\s*(<<|<=|=|>=|>>)\s*([^)\s]+)\s*\)", relation)
        if match:
            return match.group(1), match.group(2)
    return None


def _numbers(version: str) -> list[int]:
    return [int(n) for n in re.findall(r"\d+", version.split("r")[0].split("_")[0])[:3]]


def _satisfies(version: list[int], op: str, bound: str) -> bool:
    left, right = tuple(version), tuple(_numbers(bound))
    return {
        "<<": left < right,
        "<=": left <= right,
        "=": left == right,
        ">=": left >= right,
        ">>": left > right,
    }[op]


# -- helpers shared with lifecycle's preflight --------------------------------------------------------------------


def port_free(host: str, port: int) -> bool:
    """Whether we could listen on host:port right now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host if host != "localhost" else "127.0.0.1", port))
        except OSError:
            return False
    return True


def fetch_box_metadata(plan: LabPlan, timeout: float = 3.0) -> dict[str, Any] | None:
    """The box metadata document the mirror serves for the lab's box, or None when nothing answers there."""
    import requests

    try:
        response = requests.get(plan.metadata_url, headers={"Accept": "application/json"}, timeout=timeout)
    except requests.RequestException:
        return None
    if response.status_code == 404:
        return {"versions": []}  # a mirror answers, without this box
    if not response.ok:
        return None
    try:
        document = response.json()
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


def local_box_versions(mirror_root: Path, name: str) -> set[tuple[str, str]]:
    """(version, provider) of every stored box called `name`."""
    from coreos_lab.mirror.store import MirrorStore

    if not mirror_root.is_dir():
        return set()
    return {(e.version, e.provider) for e in MirrorStore(mirror_root).entries() if e.name == name}


COMMON_CHECKS: list[Check] = [
    check_vagrant,
    check_virtualization,
    check_subnet,
    check_mirror,
    check_vagrant_box,
    check_ports,
]


def check_libvirt(ctx: DoctorContext) -> Iterable[Finding]:
    """libvirtd listening, the vagrant-libvirt plugin, and whether KVM really runs guests (else: qemu driver)."""
    from coreos_lab.vagrant import libvirt

    socket_path = libvirt.libvirt_socket()
    if socket_path is None:
        yield Finding(
            "libvirtd",
            "fail",
            f"no libvirt daemon socket ({', '.join(libvirt.LIBVIRT_SOCKETS[:2])})",
            "install libvirt-daemon-system and start libvirtd (`systemctl start libvirtd`, or `libvirtd -d`)",
        )
    else:
        yield Finding("libvirtd", "ok", f"libvirt daemon listening at {socket_path}")
    plugin = libvirt.vagrant_libvirt_plugin()
    if plugin is None:
        yield Finding(
            "vagrant-libvirt",
            "fail",
            "the vagrant-libvirt plugin is not installed",
            "apt-get install vagrant-libvirt (or `vagrant plugin install vagrant-libvirt`)",
        )
    else:
        yield Finding("vagrant-libvirt", "ok", f"vagrant-libvirt {plugin}")
    kvm = libvirt.kvm_check()
    if kvm.usable:
        yield Finding("kvm", "ok", kvm.reason)
    else:
        yield Finding(
            "kvm",
            "warn",
            f"KVM cannot run guests here ({kvm.reason}); libvirt.driver auto renders qemu: software emulation, "
            "slower but working",
            "set libvirt.driver: qemu in lab.yaml to say so explicitly",
        )


PROVIDER_CHECKS: dict[str, list[Check]] = {
    "virtualbox": [check_virtualbox, check_virtualbox_hostonly],
    "libvirt": [check_libvirt],
}


def diagnose(plan: LabPlan | None, *, provider: str | None = None, mirror_root: Path) -> DoctorReport:
    """Run every check for the lab (or, without one, the machine-wide ones for `provider`)."""
    chosen = plan.provider if plan else (provider or "virtualbox")
    ctx = DoctorContext(plan=plan, provider=chosen, mirror_root=mirror_root)
    report = DoctorReport(plan.lab_dir if plan else None, chosen)
    checks = [*COMMON_CHECKS[:1], *PROVIDER_CHECKS.get(chosen, []), *COMMON_CHECKS[1:]]
    if chosen not in PROVIDER_CHECKS:
        report.findings.append(Finding("provider", "warn", f"no checks for provider {chosen!r}"))
    for check in checks:
        report.findings.extend(check(ctx))
    return report
