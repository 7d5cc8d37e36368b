"""`lab doctor`: every prerequisite of a lab checked at once, each finding ok / warn / fail with a fix.

Checks are plain functions `check(ctx) -> Iterable[DoctorFinding]` (`coreos_lab.prerequisites`). `COMMON_CHECKS` run
for every lab; the provider's own `checks` (in the provider table, `coreos_lab.vagrant.providers`) add what it
needs. The same provider checks serve `lab up`'s preflight, so the two never disagree.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import shutil
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coreos_lab import proc
from coreos_lab.errors import BadInput
from coreos_lab.lab.plan import LabPlan
from coreos_lab.prerequisites import Check, DoctorContext, DoctorFinding
from coreos_lab.vagrant.providers import DEFAULT_PROVIDER, PROVIDERS


@dataclass
class DoctorReport:
    lab_dir: Path | None
    provider: str
    findings: list[DoctorFinding] = field(default_factory=list)

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


# -- machine-wide ------------------------------------------------------------------------------------------------


def check_vagrant(ctx: DoctorContext) -> Iterable[DoctorFinding]:
    from coreos_lab.errors import LabError
    from coreos_lab.vagrant.adapter import INSTALL_HINT, Vagrant

    if shutil.which("vagrant") is None:
        yield DoctorFinding("vagrant", "fail", "vagrant not found on PATH", INSTALL_HINT)
        return
    try:
        version = Vagrant(ctx.plan.lab_dir if ctx.plan else Path.cwd()).version()
    except LabError as exc:
        yield DoctorFinding("vagrant", "fail", exc.message, "reinstall Vagrant")
        return
    ctx.facts["vagrant_version"] = version
    yield DoctorFinding("vagrant", "ok", f"Vagrant {version}")


def check_virtualization(ctx: DoctorContext) -> Iterable[DoctorFinding]:
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
        yield DoctorFinding("virtualization", "ok", "hardware virtualization (VT-x/AMD-V) is available")
    else:
        yield DoctorFinding(
            "virtualization",
            "warn",
            "no hardware virtualization (VT-x/AMD-V) visible to this machine: 64-bit guests will not boot, and "
            'Vagrant ends with "Timed out while waiting for the machine to boot" / SSH connection timeout',
            "enable VT-x/AMD-V in the BIOS/UEFI (or nested virtualization for a VM host)",
        )


def check_subnet(ctx: DoctorContext) -> Iterable[DoctorFinding]:
    """The lab's private network must not overlap a route of another interface (docker0's 172.17.0.0/16
    swallows coreos-vagrant's 172.17.8.0/24: host-only traffic then goes to Docker's bridge)."""
    if ctx.plan is None or ctx.plan.subnet is None:
        return
    subnet = ctx.plan.subnet
    routes = interface_routes()
    if routes is None:
        yield DoctorFinding("subnet", "warn", f"could not read the routing table to check {subnet}", "install iproute2")
        return
    clashes = [
        (net, dev)
        for net, dev in routes
        if net.version == subnet.version and net.overlaps(subnet) and not _is_provider_interface(dev)
    ]
    if clashes:
        net, dev = clashes[0]
        yield DoctorFinding(
            "subnet",
            "fail",
            f"lab subnet {subnet} overlaps {net} on {dev}: traffic to the nodes would go to {dev}",
            f"choose another `subnet` in lab.yaml, or move {dev} "
            + ('(Docker: "bip" in /etc/docker/daemon.json)' if dev.startswith("docker") else "to another range"),
        )
    else:
        yield DoctorFinding("subnet", "ok", f"lab subnet {subnet} clashes with no interface route")


def check_management_network(ctx: DoctorContext) -> Iterable[DoctorFinding]:
    """A provider's management network (libvirt: vagrant-libvirt's NAT + DHCP network) must be free: no route of
    another interface on it (a VPN, Docker, a second libvirt network's bridge is a libvirt network below), no other
    libvirt network overlapping it, and an existing `vagrant-libvirt` network must have the lab's subnet — else
    vagrant-libvirt fails to create or start it, or the guests' DHCP and NAT go astray."""
    from coreos_lab.vagrant import libvirt

    spec = PROVIDERS.get(ctx.provider)
    if spec is None or not spec.management_network:
        return
    setting = ctx.plan.management_network if ctx.plan and ctx.plan.management_network else libvirt.MANAGEMENT_NETWORK
    wanted = ipaddress.ip_network(setting, strict=False)
    routes = interface_routes() or []
    networks = libvirt.defined_networks() or []
    taken = [net for net, _ in routes] + [net for _, net in networks]
    free = next_free_network(wanted, taken)
    instead = f"set libvirt.management_network: {free} in lab.yaml" if free else "choose another management network"
    for net, dev in routes:
        if net.version == wanted.version and net.overlaps(wanted) and not dev.startswith(spec.host_interfaces):
            yield DoctorFinding(
                "management-network",
                "fail",
                f"libvirt management network {wanted} overlaps {net} on {dev}: the guests' DHCP and NAT would clash "
                f"with {dev}",
                instead,
            )
            return
    for name, net in networks:
        if name == libvirt.MANAGEMENT_NETWORK_NAME and net.version == wanted.version and net != wanted:
            yield DoctorFinding(
                "management-network",
                "fail",
                f"libvirt network {name} exists with {net}, not the lab's management network {wanted}: "
                "vagrant-libvirt refuses to use it",
                f"set libvirt.management_network: {net} in lab.yaml, or remove it when no machine uses it: "
                f"virsh net-destroy {name} && virsh net-undefine {name}",
            )
            return
        if name != libvirt.MANAGEMENT_NETWORK_NAME and net.version == wanted.version and net.overlaps(wanted):
            yield DoctorFinding(
                "management-network",
                "fail",
                f"libvirt network {name} ({net}) overlaps the management network {wanted}: vagrant-libvirt cannot "
                "start a second network on it",
                f"{instead}, or remove {name} when no machine uses it: virsh net-destroy {name} && "
                f"virsh net-undefine {name}",
            )
            return
    yield DoctorFinding("management-network", "ok", f"libvirt management network {wanted} clashes with nothing")


def next_free_network(
    wanted: ipaddress.IPv4Network | ipaddress.IPv6Network,
    taken: list[ipaddress.IPv4Network | ipaddress.IPv6Network],
) -> str | None:
    """The first /24 after `wanted` in 192.168.0.0/16 that overlaps nothing `taken` (for a fix to name)."""
    if wanted.version != 4:
        return None
    start = int(wanted.network_address) >> 8 & 0xFF if wanted.subnet_of(ipaddress.IPv4Network("192.168.0.0/16")) else 0
    for third in [*range(start + 1, 255), *range(1, start + 1)]:
        candidate = ipaddress.IPv4Network(f"192.168.{third}.0/24")
        if not any(t.version == 4 and t.overlaps(candidate) for t in taken):
            return str(candidate)
    return None


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
    return any(dev.startswith(p.host_interfaces) for p in PROVIDERS.values())


def check_mirror(ctx: DoctorContext) -> Iterable[DoctorFinding]:
    """The mirror answers at the lab's URL, or `lab up` can serve the local store itself; the box is in it."""
    if ctx.plan is None:
        return
    plan = ctx.plan
    metadata = ctx.facts["mirror_metadata"] = fetch_box_metadata(plan)  # `lab up` serves the mirror by it
    if metadata is not None:
        yield DoctorFinding("mirror", "ok", f"mirror reachable at {plan.mirror_url}")
        offered = {
            (v.get("version"), p.get("name")) for v in metadata.get("versions", []) for p in v.get("providers", [])
        }
        where = plan.metadata_url
    elif plan.mirror_is_local:
        free = port_free(plan.mirror_host, plan.mirror_port)
        yield DoctorFinding(
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
        yield DoctorFinding(
            "mirror",
            "fail",
            f"mirror not reachable at {plan.mirror_url}",
            "start it there (`lab mirror serve`), or point lab.yaml at a local one",
        )
        return
    wanted = f"{plan.box_name} {plan.box_version or '(any version)'} ({plan.provider})"
    if any((plan.box_version is None or v == plan.box_version) and p == plan.provider for v, p in offered):
        yield DoctorFinding("mirror-box", "ok", f"{wanted} is in the mirror ({where})")
    else:
        yield DoctorFinding(
            "mirror-box",
            "fail",
            f"{wanted} is not in the mirror ({where})",
            f"lab mirror fetch --distro {plan.distro} ... (or `lab mirror import` a box downloaded elsewhere)",
        )


def check_etcd_image(ctx: DoctorContext) -> Iterable[DoctorFinding]:
    """Flatcar's etcd runs from a container image that the guests pull from the mirror (unless the lab pulls it
    from upstream): the mirror must have it. Asked where `check_mirror` found the box (it runs first): the mirror
    answering at the lab's URL, as a registry, else the local store that `lab up` then serves."""
    plan, image = ctx.plan, ctx.plan.etcd_image if ctx.plan else None
    if plan is None or image is None:
        return
    if not plan.etcd_image_from_mirror:
        yield DoctorFinding("mirror-image", "ok", f"the guests pull {image} from its registry (etcd.image_source)")
        return
    from coreos_lab.mirror.images.manifests import DEFAULT_PLATFORM
    from coreos_lab.mirror.images.reference import parse_reference

    ref = parse_reference(image)
    if ctx.facts.get("mirror_metadata") is not None:
        present = mirror_has_manifest(plan.mirror_url, ref.repository, ref.reference)
        where = plan.mirror_url
    elif plan.mirror_is_local:
        present = stored_image_has(ctx.mirror_root, ref.repository, ref.reference)
        where = str(ctx.mirror_root)
    else:
        return  # no mirror to ask: check_mirror has failed already
    wanted = f"etcd image {image} (as {ref.mirror_reference})"
    if present:
        yield DoctorFinding("mirror-image", "ok", f"{wanted} is in the mirror ({where})")
    else:
        yield DoctorFinding(
            "mirror-image",
            "fail",
            f"{wanted} is not in the mirror for {DEFAULT_PLATFORM} ({where}); the {plan.distro} guests pull it from "
            "there",
            f"lab mirror image fetch {image}{root_flag_text(ctx.mirror_root)} (or `lab mirror image import` an image "
            "saved elsewhere; `etcd.image_source: upstream` in lab.yaml pulls it from its registry instead)",
        )


def root_flag_text(mirror_root: Path) -> str:
    """` --root DIR` for a command the user is told to run, when the lab's mirror is not where it looks anyway."""
    import shlex

    from coreos_lab.paths import default_mirror_root

    if mirror_root.expanduser().resolve() == default_mirror_root().expanduser().resolve():
        return ""
    return f" --root {shlex.quote(str(mirror_root))}"


def mirror_has_manifest(mirror_url: str, repository: str, reference: str, timeout: float = 3.0) -> bool:
    """Whether the registry at `mirror_url` answers `repository`'s manifest `reference` (a tag or digest) for
    the guests' platform: `HEAD /v2/<repository>/manifests/<reference>` accepting no index type, so our
    registry answers an index's linux/amd64 manifest or MANIFEST_UNKNOWN when it holds none."""
    import requests

    from coreos_lab.mirror.images.manifests import IMAGE_MEDIA_TYPES

    url = f"{mirror_url.rstrip('/')}/v2/{repository}/manifests/{reference}"
    try:
        response = requests.head(url, headers={"Accept": ", ".join(IMAGE_MEDIA_TYPES)}, timeout=timeout)
    except requests.RequestException:
        return False
    return response.status_code == 200


def stored_image_has(mirror_root: Path, repository: str, reference: str) -> bool:
    """Whether the local store has `repository`'s manifest `reference` (a tag or digest) for the guests'
    platform: an index with a stored linux/amd64 manifest, or a manifest whose config says linux/amd64."""

    from coreos_lab.mirror.images.manifests import DEFAULT_PLATFORM, ImageIndex, parse_platform
    from coreos_lab.mirror.images.store import ImageStore

    if not mirror_root.is_dir():
        return False
    store = ImageStore(mirror_root)
    wanted = parse_platform(DEFAULT_PLATFORM)
    try:
        descriptor = store.lookup_manifest(repository, reference)
        if descriptor is None:
            return False
        parsed = store.manifest(descriptor)
        if isinstance(parsed, ImageIndex):
            entry = parsed.for_platform(wanted)
            return entry is not None and store.has_blob(entry.digest)
        config = json.loads(store.read_blob(parsed.config.digest))
        return isinstance(config, dict) and (config.get("os"), config.get("architecture")) == (
            wanted.os,
            wanted.architecture,
        )
    except (BadInput, OSError, ValueError):
        return False  # damaged: `lab mirror verify` names what


def vagrant_has_box(plan: LabPlan) -> bool:
    """Whether Vagrant already has the lab's box (name, version, provider): `vagrant box list`."""
    from coreos_lab.vagrant.adapter import Vagrant

    vagrant = Vagrant(plan.lab_dir, provider=plan.provider, keep_logs=False)
    return vagrant.has_box(plan.box_name, plan.box_version, plan.provider)


def check_vagrant_box(ctx: DoctorContext) -> Iterable[DoctorFinding]:
    from coreos_lab.errors import LabError

    if ctx.plan is None or "vagrant_version" not in ctx.facts:
        return
    plan = ctx.plan
    try:
        present = vagrant_has_box(plan)
    except LabError as exc:
        yield DoctorFinding("vagrant-box", "warn", f"could not list Vagrant's boxes: {exc.message}")
        return
    wanted = f"{plan.box_name} {plan.box_version or ''} ({plan.provider})".replace("  ", " ")
    if present:
        yield DoctorFinding("vagrant-box", "ok", f"{wanted} is installed in Vagrant")
    else:
        yield DoctorFinding("vagrant-box", "ok", f"{wanted} is not in Vagrant yet: `lab up` adds it from the mirror")


def check_ports(ctx: DoctorContext) -> Iterable[DoctorFinding]:
    if ctx.plan is None or not ctx.plan.host_ports:
        return
    taken = [p for p in ctx.plan.host_ports if not port_free("127.0.0.1", p)]
    if taken:
        yield DoctorFinding(
            "ports",
            "fail",
            f"forwarded host port(s) in use: {', '.join(map(str, taken))}",
            "stop what listens there, or change forwarded_ports in lab.yaml",
        )
    else:
        yield DoctorFinding("ports", "ok", f"forwarded host ports free: {', '.join(map(str, ctx.plan.host_ports))}")


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

    headers = {"Accept": "application/json"}
    if plan.mirror_token_file is not None:
        # A private mirror (`lab mirror serve --token-file`) wants the token as Vagrant sends it; a missing file is
        # reported by the Vagrantfile, which reads the same one.
        with contextlib.suppress(OSError, UnicodeDecodeError):
            headers["Authorization"] = f"Bearer {plan.mirror_token_file.read_text().strip()}"
    try:
        response = requests.get(plan.metadata_url, headers=headers, timeout=timeout)
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
    return {(e.version, e.key.provider) for e in MirrorStore(mirror_root).entries() if e.name == name}


COMMON_CHECKS: list[Check] = [
    check_vagrant,
    check_virtualization,
    check_subnet,
    check_mirror,
    check_etcd_image,
    check_vagrant_box,
    check_ports,
]


def provider_checks(provider: str) -> tuple[Check, ...]:
    """The provider's own checks (none for a provider the table does not know)."""
    spec = PROVIDERS.get(provider)
    return spec.checks if spec else ()


def diagnose(plan: LabPlan | None, *, provider: str | None = None, mirror_root: Path) -> DoctorReport:
    """Run every check for the lab (or, without one, the machine-wide ones for `provider`)."""
    chosen = plan.provider if plan else (provider or DEFAULT_PROVIDER)
    ctx = DoctorContext(plan=plan, provider=chosen, mirror_root=mirror_root)
    report = DoctorReport(plan.lab_dir if plan else None, chosen)
    checks = [*COMMON_CHECKS[:1], *provider_checks(chosen), check_management_network, *COMMON_CHECKS[1:]]
    if chosen not in PROVIDERS:
        report.findings.append(DoctorFinding("provider", "warn", f"no checks for provider {chosen!r}"))
    for check in checks:
        report.findings.extend(check(ctx))
    return report
