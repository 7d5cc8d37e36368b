"""What makes a Flatcar QEMU image a Vagrant libvirt box that keeps the box contract `lab` relies on
(docs/field-notes.md §11): user `core` reachable with the key Vagrant uses, and the rendered user-data applied by
coreos-cloudinit from the Vagrant user-data path.

Flatcar's QEMU image takes its configuration the way Flatcar documents for QEMU and libvirt: an Ignition config
in QEMU's firmware configuration device under `opt/org.flatcar-linux/config` (`flatcar_production_qemu.sh -i`).
The box's Vagrantfile passes one through vagrant-libvirt's `qemuargs`; it carries Vagrant's insecure public key for
`core` and the path unit Flatcar's own Vagrant box runs coreos-cloudinit with (its oem-vagrant cloud-config).

The config travels inline (`-fw_cfg name=…,string=…`), not as a file: QEMU under libvirt's system daemon runs as
another user and, on Ubuntu, under an AppArmor profile that lets it read its disks only, so a file in the user's
Vagrant home would be refused. Inline, two escapes are needed: QEMU's option syntax doubles every `,`, and
vagrant-libvirt 0.11 writes the argument unescaped into `<qemu:arg value='…'/>`, so `<`, `>`, `&` and `'` (which
JSON allows only inside strings) are written as JSON's `\\u` escapes.
"""

from __future__ import annotations

import json
from typing import Any

from coreos_lab.distros import Distro

# The key every Vagrant authorises with `config.ssh.insert_key = false` (Vagrant's keys/vagrant.pub; Vagrant ≥ 2.3.7
# also offers an ed25519 key, and still tries this one). Flatcar's Vagrant box authorises the same line.
VAGRANT_INSECURE_PUBLIC_KEY = (
    "ssh-rsa AAAAB3NzaC1yc2EAAAABIwAAAQEA6NF8iallvQVp22WDkTkyrtvp9eWW6A8YVr+kz4TjGYe7gHzIw+niNltGEFHzD8+v1I2YJ6oXevct1"
    "YeS0o9HZyN1Q9qgCgzUFtdOKLv6IedplqoPkcmF0aYet2PkEDo3MlTBckFXPITAMzF8dJSIFo9D8HfdOV0IAdx4O7PtixWKn5y2hMNG0zQPyUecp4"
    "pzC6kivAIhyfHilFR61RGL+GPXQ2MWZWFYbAGjyiYJnAmCP3NOTd0jMZEnDkbUvxhMmBYSdETk1rRgm+R4LOzFUGaHqHDLKLX+FIPKcF96hrucXzc"
    "WyLbIbEgE98OHlnVYCzRdK8jlqm8tehUc9c9WhQ== vagrant insecure public key"
)
FW_CFG_NAME = "opt/org.flatcar-linux/config"  # flatcar_production_qemu.sh's -i; Flatcar's Ignition reads it
IGNITION_VERSION = "3.3.0"  # Ignition spec 3 (Flatcar ≥ 3185.0.0)
USER_DATA_FILE = "vagrantfile-user-data"  # what the lab's Vagrantfile provisions into the user-data directory
PATH_UNIT = "coreos-cloudinit-vagrant-user.path"  # the name Flatcar's oem-vagrant cloud-config gives it
XML_UNSAFE = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "'": "\\u0027"}


def systemd_path_escape(path: str) -> str:
    """`systemd-escape --path`: '/' becomes '-', and every byte but ASCII letters, digits, ':', '_' and a '.' not
    leading becomes `\\xNN`."""
    out = []
    for i, char in enumerate(path.strip("/")):
        if char == "/":
            out.append("-")
        elif char.isascii() and (char.isalnum() or char in ":_" or (char == "." and i > 0)):
            out.append(char)
        else:
            out.extend(f"\\x{byte:02x}" for byte in char.encode())
    return "".join(out)


def user_data_path(distro: Distro) -> str:
    return f"{distro.user_data_dir}/{USER_DATA_FILE}"


def ignition_config(distro: Distro) -> dict[str, Any]:
    """The Ignition config that makes the image keep the box contract: Vagrant's key for `core`, and a path unit
    that starts coreos-cloudinit (Flatcar's `user-cloudinit@.service` template) once the user-data exists."""
    user_data = user_data_path(distro)
    path_unit = (
        "[Unit]\n"
        "Description=Apply the user-data Vagrant provisions with coreos-cloudinit\n"
        "[Path]\n"
        f"PathExists={user_data}\n"
        f"Unit=user-cloudinit@{systemd_path_escape(user_data)}.service\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    )
    return {
        "ignition": {"version": IGNITION_VERSION},
        "passwd": {"users": [{"name": "core", "sshAuthorizedKeys": [VAGRANT_INSECURE_PUBLIC_KEY]}]},
        "systemd": {"units": [{"name": PATH_UNIT, "enabled": True, "contents": path_unit}]},
    }


def fw_cfg_argument(config: dict[str, Any]) -> str:
    """QEMU's `-fw_cfg` argument that hands `config` to the guest under `FW_CFG_NAME`, safe for vagrant-libvirt's
    domain XML (see the module docstring)."""
    text = json.dumps(config, separators=(",", ":"), sort_keys=True)
    for char, escape in XML_UNSAFE.items():
        text = text.replace(char, escape)
    return f"name={FW_CFG_NAME},string={text.replace(',', ',,')}"


def ignition_from_fw_cfg_argument(argument: str) -> dict[str, Any]:
    """The config a `fw_cfg_argument` carries: what the guest reads at /sys/firmware/qemu_fw_cfg/by_name/…/raw."""
    prefix = f"name={FW_CFG_NAME},string="
    if not argument.startswith(prefix):
        raise ValueError(f"not a fw_cfg string argument for {FW_CFG_NAME}: {argument[:60]!r}")
    doc = json.loads(argument.removeprefix(prefix).replace(",,", ","))
    assert isinstance(doc, dict)
    return doc


def ruby_string(text: str) -> str:
    """A Ruby single-quoted literal of `text`: only `\\` and `'` are escapes there (no interpolation)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def box_vagrantfile(distro: Distro, source: str) -> str:
    """The Vagrantfile inside the box: Flatcar's Vagrant box settings, plus the Ignition config through fw_cfg."""
    argument = fw_cfg_argument(ignition_config(distro))
    return f"""# Made by coreos-lab from {source}.
# The Vagrant box contract (user core with Vagrant's insecure key; user-data provisioned to
# {user_data_path(distro)} applied by coreos-cloudinit) reaches the image as an
# Ignition config through QEMU's fw_cfg ({FW_CFG_NAME}), as Flatcar's QEMU images take their configuration.
IGNITION_FW_CFG = {ruby_string(argument)}

# As Flatcar's own Vagrant box: networks through coreos-cloudinit (Flatcar has no cloud-init or NetworkManager).
require Vagrant.source_root.join("plugins/guests/coreos/cap/configure_networks.rb").to_s

module VagrantPlugins
  module GuestCoreOS
    module Cap
      class ConfigureNetworks
        def self.configure_networks(machine, networks)
          configure_networks_cloud_init(machine, networks)
        end
      end
    end
  end
end

Vagrant.configure("2") do |config|
  config.ssh.username = "core"
  config.ssh.insert_key = false
  config.vm.guest = :coreos
  config.vm.synced_folder ".", "/vagrant", disabled: true
  config.vm.provider :libvirt do |libvirt|
    libvirt.qemuargs value: "-fw_cfg"
    libvirt.qemuargs value: IGNITION_FW_CFG
  end
end
"""


def refused_key_message(box: str, machine: str) -> str:
    """Why `lab up` stops when a guest's SSH server refuses Vagrant's key: the box broke the contract."""
    return (
        f"box {box}: {machine}'s SSH server refuses Vagrant's insecure key for user core, so the box does not keep "
        "the Vagrant box contract (a box made from Flatcar's QEMU image takes the key from the Ignition config its "
        f"Vagrantfile passes through QEMU's fw_cfg, {FW_CFG_NAME}: the image did not read it)"
    )
