"""The distros a lab can run, one row each: every fact about a distro that the rest of the package asks.

CoreOS Container Linux (gone since 2020, still kept in mirrors behind firewalls) runs etcd2 and fleet; Flatcar,
its successor, runs etcd v3 from a container image as etcd-member.service and has no fleet (docs/field-notes.md
§2, §3). Nothing outside this module spells out a release server, a user-data directory, a unit name or an etcd
image per distro.
"""

from __future__ import annotations

from dataclasses import dataclass

from coreos_lab.errors import BadInput


@dataclass(frozen=True)
class Distro:
    name: str  # as in lab.yaml, --distro, box names and release-server file names
    title: str  # as in prose
    channels: tuple[str, ...]
    release_server: str  # a channel's base URL; `{channel}` is replaced by the channel
    user_data_dir: str  # where the box's path unit picks up user-data (coreos-vagrant's layout)
    etcd_unit: str  # the systemd unit that runs etcd
    etcd_api: int  # the etcd API the cluster is asked in: 2 (etcd2), or 3 (etcd v3, serving v2 to proxies too)
    fleet: bool  # fleet runs beside etcd
    # The container image etcd runs from, or None when etcd is on the host (CoreOS's etcd2). Flatcar's
    # etcd-member.service runs `/usr/lib/flatcar/etcd-wrapper`, which ends in `docker run … --entrypoint
    # /usr/local/bin/etcd ${ETCD_IMAGE:-${ETCD_IMAGE_URL}:${ETCD_IMAGE_TAG}}`: this is the unit's
    # ETCD_IMAGE_URL:ETCD_IMAGE_TAG (amd64; arm64 appends `-arm64`, and the Vagrant box is amd64 only).
    etcd_image: str | None
    # Providers the release server publishes no Vagrant box for, whose box `lab mirror fetch` makes from the
    # release's QEMU image instead (docs/field-notes.md §11): Flatcar's Vagrant box is VirtualBox/Parallels only.
    boxes_from_qemu_image: tuple[str, ...] = ()

    def box_name(self, channel: str) -> str:
        """The box's name, as the release server's JSON names it (never renamed: Vagrant checks it)."""
        return f"{self.name}-{channel}"

    @property
    def file_stem(self) -> str:
        """The release server's file names: `<stem>.json`, `<stem>.box`, `<stem>.box.DIGESTS`, …"""
        return f"{self.name}_production_vagrant"

    @property
    def qemu_image_file(self) -> str:
        """The release's QEMU disk image (qcow2), beside `<file>.DIGESTS`, `.DIGESTS.asc` and `.sig`."""
        return f"{self.name}_production_qemu_image.img"

    @property
    def version_variable(self) -> str:
        """The variable of a release's version.txt that names the version (`FLATCAR_VERSION=…`)."""
        return f"{self.name.upper()}_VERSION"

    @property
    def units(self) -> tuple[str, ...]:
        """The units that must be active on every node, etcd's first (its state decides whether etcd is asked)."""
        return (self.etcd_unit, "fleet") if self.fleet else (self.etcd_unit,)

    @property
    def template(self) -> str:
        """The user-data template of the distro's machines."""
        return f"user-data-{self.name}.yaml.j2"

    @property
    def summary(self) -> str:
        """`coreos (etcd2 + fleet)`: the distro and what it runs."""
        return f"{self.name} ({self.etcd_unit}{' + fleet' if self.fleet else ', no fleet'})"


DISTROS: dict[str, Distro] = {
    "coreos": Distro(
        name="coreos",
        title="CoreOS",
        channels=("alpha", "beta", "stable"),
        release_server="https://{channel}.release.core-os.net",
        user_data_dir="/var/lib/coreos-vagrant",
        etcd_unit="etcd2",
        etcd_api=2,
        fleet=True,
        etcd_image=None,
    ),
    "flatcar": Distro(
        name="flatcar",
        title="Flatcar",
        channels=("alpha", "beta", "stable", "lts"),
        release_server="https://{channel}.release.flatcar-linux.net",
        user_data_dir="/var/lib/flatcar-vagrant",
        etcd_unit="etcd-member",
        etcd_api=3,
        fleet=False,
        etcd_image="quay.io/coreos/etcd:v3.5.16",
        boxes_from_qemu_image=("libvirt",),
    ),
}
DISTRO_NAMES: tuple[str, ...] = tuple(DISTROS)


def distro_named(name: str) -> Distro:
    """The distro called `name`; `BadInput` naming the choices for any other name."""
    try:
        return DISTROS[name]
    except KeyError:
        raise BadInput(f"distro must be one of {', '.join(DISTRO_NAMES)}, not {name!r}") from None
