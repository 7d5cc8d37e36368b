"""The Vagrant providers a lab can use, one row each: every fact about a provider that the rest of the package
asks. Each provider's own module (`virtualbox`, `libvirt`) knows how to look at this host; this table is where
config, plan, lifecycle, doctor and the Vagrant adapter find it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from coreos_lab.prerequisites import Check
from coreos_lab.vagrant import libvirt, virtualbox

# How `lab up` brings several machines up at once (docs/field-notes.md §1):
#   processes    one `vagrant up NAME` process per machine, all at the same time (the provider is not parallel
#                inside one Vagrant process, but separate processes are safe once the box is added);
#   one-process  one `vagrant up` for every machine (the provider is parallel inside it and shares networks
#                between machines, which separate processes would race to create);
#   serial       one machine after another.
UpConcurrency = Literal["processes", "one-process", "serial"]


@dataclass(frozen=True)
class Provider:
    name: str  # as in lab.yaml, --provider and box metadata
    up: UpConcurrency
    # The host's loopback as guests reach it through NAT; None: guests reach the host at the gateway of the
    # management network every machine is attached to.
    nat_host: str | None
    host_interfaces: tuple[str, ...]  # name prefixes of the host interfaces the provider creates for its networks
    install_hint: str  # what to do when Vagrant says the provider cannot be used here
    checks: tuple[Check, ...]  # doctor's and `lab up`'s preflight checks of what the provider needs
    # `lab drill partition`/`heal`: (machine id, up) plugs a running machine's private network in or out, SSH kept
    set_private_link: Callable[[str, bool], str]

    @property
    def management_network(self) -> bool:
        """Whether machines are attached to a management network (which the lab defines, and removes again)."""
        return self.nat_host is None

    def guest_host(self, management_network: str | None = None) -> str:
        """The host's address as guests reach it: the NAT address, or the management network's gateway."""
        if self.nat_host is not None:
            return self.nat_host
        return libvirt.management_gateway(management_network or libvirt.MANAGEMENT_NETWORK)


PROVIDERS: dict[str, Provider] = {
    "virtualbox": Provider(
        name="virtualbox",
        up="processes",
        nat_host=virtualbox.NAT_HOST,
        host_interfaces=("vboxnet",),
        install_hint="install VirtualBox so that VBoxManage is on PATH (Debian's Vagrant 2.3.4 needs VirtualBox "
        "< 7.1), or set `provider: libvirt` in lab.yaml; `lab doctor` checks every prerequisite",
        checks=virtualbox.CHECKS,
        set_private_link=virtualbox.set_private_link,
    ),
    "libvirt": Provider(
        name="libvirt",
        up="one-process",
        nat_host=None,
        host_interfaces=("virbr",),
        install_hint="install vagrant-libvirt and start libvirtd (its socket must exist); "
        "`lab doctor` checks every prerequisite",
        checks=libvirt.CHECKS,
        set_private_link=libvirt.set_private_link,
    ),
}
PROVIDER_NAMES: tuple[str, ...] = tuple(PROVIDERS)
DEFAULT_PROVIDER = "virtualbox"
