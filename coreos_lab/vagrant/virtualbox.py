"""What `provider: virtualbox` needs on this host, and the doctor checks that look: VirtualBox installed with
its kernel driver loaded, a series this Vagrant can drive, and the lab subnet among the host-only ranges
VirtualBox allows.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

from coreos_lab import proc
from coreos_lab.prerequisites import Check, DoctorContext, DoctorFinding

# From a guest, VirtualBox NAT maps the host's loopback to 10.0.2.2 (docs/field-notes.md §1).
NAT_HOST = "10.0.2.2"

# Where Vagrant's VirtualBox driver table lives (Debian's package, HashiCorp's installer): the series it lists
# are the only ones it can drive; any other makes `vagrant up` fail with VirtualBoxInvalidVersion.
VAGRANT_GEM_GLOBS = (
    "/usr/share/rubygems-integration/all/gems/vagrant-{version}",
    "/usr/lib/ruby/vendor_ruby/vagrant-{version}",
    "/opt/vagrant/embedded/gems/gems/vagrant-{version}",
    "/opt/vagrant/embedded/gems/{version}/gems/vagrant-{version}",
)


def check_virtualbox(ctx: DoctorContext) -> Iterable[DoctorFinding]:
    probe = probe_virtualbox()
    if probe is None:
        yield DoctorFinding(
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
        yield DoctorFinding(
            "virtualbox",
            "fail",
            f"VirtualBox {found} is installed but its kernel module (vboxdrv) is not loaded",
            "run `sudo /sbin/vboxconfig` (install the kernel headers first; on Secure Boot, sign the module)",
        )
        return
    yield DoctorFinding("virtualbox", "ok", f"VirtualBox {found}")
    ctx.facts["virtualbox_version"] = found
    vagrant_version = ctx.facts.get("vagrant_version")
    if vagrant_version:
        clash = known_bad_pair(vagrant_version, found)
        if clash:
            yield DoctorFinding(
                "virtualbox-vagrant",
                "fail",
                clash,
                "install a VirtualBox release this Vagrant supports, or a newer Vagrant",
            )
        else:
            yield DoctorFinding("virtualbox-vagrant", "ok", f"Vagrant {vagrant_version} supports VirtualBox {found}")


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


def check_virtualbox_hostonly(ctx: DoctorContext) -> Iterable[DoctorFinding]:
    found = ctx.facts.get("virtualbox_version")
    if ctx.plan is None or ctx.plan.subnet is None or not found or tuple(_numbers(found)) < (6, 1, 28):
        return
    subnet = ctx.plan.subnet
    try:
        conf: str | None = VBOX_NETWORKS_CONF.read_text()
    except FileNotFoundError:
        conf = None
    except OSError as exc:
        yield DoctorFinding("virtualbox-network", "warn", f"cannot read {VBOX_NETWORKS_CONF}: {exc.strerror}")
        return
    allowed = hostonly_ranges(conf)
    if any(subnet.version == net.version and subnet.subnet_of(net) for net in allowed):
        yield DoctorFinding("virtualbox-network", "ok", f"VirtualBox allows host-only network {subnet}")
        return
    shown = ", ".join(map(str, allowed)) or "none"
    yield DoctorFinding(
        "virtualbox-network",
        "fail",
        f"VirtualBox {found} allows host-only networks only in {shown} ({VBOX_NETWORKS_CONF}); "
        f"the lab subnet {subnet} would fail `vagrant up`",
        f"add the line `* {subnet}` to {VBOX_NETWORKS_CONF}, or choose a `subnet` inside {shown} in lab.yaml",
    )


# The lab's private network is the machine's second NIC: Vagrant keeps NIC 1 for NAT, which SSH goes through.
PRIVATE_NIC = 2


def set_private_link(vm: str, up: bool) -> str:
    """Plug the running VM's private-network cable in or out (`VBoxManage controlvm VM setlinkstate2 on|off`): the
    guest loses its peers, while SSH, through NAT on NIC 1, stays. Says what it did."""
    state = "on" if up else "off"
    proc.run([proc.which("VBoxManage"), "controlvm", vm, f"setlinkstate{PRIVATE_NIC}", state], timeout=60)
    return f"VirtualBox NIC {PRIVATE_NIC} cable {'connected' if up else 'disconnected'} (VBoxManage controlvm)"


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


CHECKS: tuple[Check, ...] = (check_virtualbox, check_virtualbox_hostonly)
