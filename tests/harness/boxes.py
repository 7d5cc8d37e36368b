"""Tiny but valid Vagrant boxes (docs/field-notes.md §1) for tests: `vagrant box add` accepts them without
VirtualBox."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

from coreos_lab.mirror.store import BoxKey, CatalogEntry, MirrorStore

_OVF = """<?xml version="1.0"?>
<Envelope ovf:version="1.0" xml:lang="en-US" xmlns="http://schemas.dmtf.org/ovf/envelope/1"
 xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">
  <References><File ovf:href="box-disk1.vmdk" ovf:id="file1"/></References>
  <VirtualSystem ovf:id="{name}"><Info>{name} {version}</Info></VirtualSystem>
</Envelope>
"""

_VAGRANTFILE = 'Vagrant.configure("2") do |config|\n  config.ssh.username = "core"\nend\n'


def make_box(
    name: str = "coreos-stable", version: str = "1.0.0", provider: str = "virtualbox", padding: int = 0
) -> bytes:
    """A gzipped tar box whose bytes differ per name/version/provider; `padding` adds bytes to the disk."""
    files = {
        "metadata.json": json.dumps({"provider": provider}).encode(),
        "box.ovf": _OVF.format(name=name, version=version).encode(),
        "box-disk1.vmdk": f"{name}-{version}".encode() + b"\0" * padding,
        "Vagrantfile": _VAGRANTFILE.encode(),
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for member, data in files.items():
            info = tarfile.TarInfo(member)
            info.size = len(data)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def add_box(
    store: MirrorStore, name: str, version: str, provider: str = "virtualbox", data: bytes | None = None
) -> CatalogEntry:
    """Put a box straight into the store (bypassing import/fetch), as a verified entry."""
    key = BoxKey(name, version, provider)
    payload = data if data is not None else make_box(name, version, provider)
    part = store.part_path(key)
    part.parent.mkdir(parents=True, exist_ok=True)
    part.write_bytes(payload)
    return store.commit(key, part, sha256=sha256(payload), source="test")


def write_box(path: Path, name: str = "coreos-stable", version: str = "1.0.0", provider: str = "virtualbox") -> str:
    """Write a box file; returns its sha256."""
    data = make_box(name, version, provider)
    path.write_bytes(data)
    return sha256(data)
