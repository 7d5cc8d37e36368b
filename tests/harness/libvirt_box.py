"""A tiny CoreOS-like libvirt box, built offline from this machine's Debian packages (docs/field-notes.md §6).

The guest runs the host's Debian kernel with an initramfs root: busybox-static, dropbear, scp and Debian's
etcdctl 3.4. It honours the CoreOS Vagrant box contract `lab` relies on (user `core`, the Vagrant
insecure key, user-data at /var/lib/coreos-vagrant/ or /var/lib/flatcar-vagrant/ applied at boot and on
provision; see tinybox/apply-user-data). The disk is an MBR with one ext4 partition (extlinux, kernel,
initramfs and the persistent /var/lib). Builds are cached by a hash of their inputs, so reruns are instant.

Flavours: `coreos` carries Debian's etcd on the host, as CoreOS carries etcd2; `flatcar` carries none, as
Flatcar: its etcd runs from the container image the user-data names, pulled over the guest network from the
registry the user-data allows (tinybox/pull-image). A Flatcar lab on it is healthy only if the image came.
`flatcar-qemu` is the `flatcar` disk as Flatcar's QEMU image behaves (`build_image`, laid out like a release and
made into a box by `lab mirror fetch --provider libvirt`): no key baked in; at boot it reads the Ignition config
from QEMU's fw_cfg, takes core's key from it and applies the user-data its path unit names (tinybox/fw-cfg-config).
`flatcar-qemu-no-fw-cfg` is that image without the reader: an image that breaks the contract.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

GUEST_FILES = Path(__file__).with_name("tinybox")
KERNEL_GLOB = "vmlinuz-*-amd64"
DISK_MIB = 256
# Module names in load order (dependencies first), as `modprobe --show-depends` lists them.
MODULES = ["virtio_pci", "virtio_blk", "virtio_net", "virtio_rng", "ext4", "qemu_fw_cfg"]
BINARIES = {
    "/usr/sbin/dropbear": "bin/dropbear",
    "/usr/bin/scp": "bin/scp",
}
# Large binaries stay out of the initramfs (which the boot loader reads through the BIOS and the kernel
# unpacks: slow under emulation) and live on the disk partition; they link only libc. Per flavour: etcdctl on
# every host, etcd only on CoreOS's.
DISK_BINARIES = {
    "coreos": {"/usr/bin/etcd": "opt/bin/etcd", "/usr/bin/etcdctl": "opt/bin/etcdctl"},
    "flatcar": {"/usr/bin/etcdctl": "opt/bin/etcdctl"},
    "flatcar-qemu": {"/usr/bin/etcdctl": "opt/bin/etcdctl"},
    "flatcar-qemu-no-fw-cfg": {"/usr/bin/etcdctl": "opt/bin/etcdctl"},
}
# The flavours that are QEMU images configured through fw_cfg, not boxes with the key baked in.
QEMU_IMAGE_FLAVOURS = ("flatcar-qemu", "flatcar-qemu-no-fw-cfg")
FLAVOURS = tuple(DISK_BINARIES)
SCRIPTS = {
    "init": "init",
    "inittab": "etc/inittab",
    "rc.shutdown": "etc/rc.shutdown",
    "udhcpc.script": "etc/udhcpc.script",
    "apply-networks": "bin/apply-networks",
    "apply-user-data": "bin/apply-user-data",
    "pull-image": "bin/pull-image",
    "sudo": "bin/sudo",
    "shutdown": "bin/shutdown",
    "systemctl": "bin/systemctl",
    "bash": "bin/bash",
}
FW_CFG_READER = {"fw-cfg-config": "bin/fw-cfg-config"}  # flavour flatcar-qemu only
REQUIRED_PACKAGES = [
    "linux-image-amd64",
    "busybox-static",
    "dropbear-bin",
    "etcd-server",
    "etcd-client",
    "extlinux",
    "syslinux-common",
    "qemu-utils",
    "openssh-client",
    "cpio",
    "e2fsprogs",
    "fdisk",
]


def vagrant_insecure_public_key() -> str:
    """The well-known key Vagrant ships (insert_key = false boxes authorise it)."""
    out = subprocess.run(["gem", "contents", "vagrant"], capture_output=True, text=True, check=False).stdout
    for line in out.splitlines():
        if line.endswith("/keys/vagrant.pub"):
            return Path(line).read_text()
    found = sorted(Path("/usr/share/rubygems-integration").glob("all/gems/vagrant-*/keys/vagrant.pub"))
    if not found:
        raise RuntimeError("Vagrant's insecure public key (keys/vagrant.pub) not found; is vagrant installed?")
    return found[-1].read_text()


def _kernel() -> tuple[Path, str]:
    kernels = sorted(Path("/boot").glob(KERNEL_GLOB))
    if not kernels:
        raise RuntimeError("no guest kernel in /boot (install linux-image-amd64)")
    kernel = kernels[-1]
    return kernel, kernel.name.removeprefix("vmlinuz-")


def _module_files(release: str) -> list[Path]:
    files: list[Path] = []
    for name in MODULES:
        out = subprocess.run(
            ["modprobe", "-S", release, "--show-depends", name], capture_output=True, text=True, check=True
        ).stdout
        for line in out.splitlines():
            if line.startswith("insmod "):
                path = Path(line.split()[1])
                if path not in files:
                    files.append(path)
    return files


def _libraries(binary: str) -> list[Path]:
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    return [Path(p) for p in re.findall(r"(/\S+\.so[.\d]*)", out)]


def _inputs_digest(kernel: Path, release: str, flavour: str) -> str:
    """Everything the image depends on: the flavour, our guest files, host binaries and kernel/modules."""
    h = hashlib.sha256(flavour.encode())
    for path in sorted(GUEST_FILES.iterdir()):
        h.update(path.name.encode() + path.read_bytes())
    h.update(Path(__file__).read_bytes())
    for path in [kernel, Path("/usr/bin/busybox"), *map(Path, BINARIES), *map(Path, DISK_BINARIES[flavour])]:
        st = path.stat()
        h.update(f"{path}:{st.st_size}:{st.st_mtime_ns}".encode())
    h.update(release.encode())
    return h.hexdigest()[:16]


def _populate_root(root: Path, release: str, flavour: str) -> None:
    for d in [
        "bin",
        "etc",
        "proc",
        "sys",
        "dev",
        "tmp",
        "run",
        "mnt",
        "var/lib",
        "var/log",
        "var/tmp",
        "home/core/.ssh",
        "lib/modules",
        "root",
    ]:
        (root / d).mkdir(parents=True, exist_ok=True)
    for link, target in [("sbin", "bin"), ("usr/bin", "../bin"), ("usr/sbin", "../bin")]:
        (root / link).parent.mkdir(parents=True, exist_ok=True)
        (root / link).symlink_to(target)
    shutil.copy2("/usr/bin/busybox", root / "bin/busybox")
    applets = subprocess.run(["/usr/bin/busybox", "--list"], capture_output=True, text=True, check=True).stdout
    for applet in applets.split():
        if (
            applet not in {"busybox", "sh", "sudo", "shutdown", "systemctl", "bash"}
            and not (root / "bin" / applet).exists()
        ):
            (root / "bin" / applet).symlink_to("busybox")
    (root / "bin/sh").symlink_to("busybox")
    for src, dst in BINARIES.items():
        shutil.copy2(src, root / dst)
        for lib in _libraries(src):
            target = root / lib.relative_to("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(lib.resolve(), target)
    for dst in DISK_BINARIES[flavour].values():
        (root / "bin" / Path(dst).name).symlink_to(f"/mnt/disk/{dst}")
    scripts = {**SCRIPTS, **(FW_CFG_READER if flavour == "flatcar-qemu" else {})}
    for src, dst in scripts.items():
        shutil.copy2(GUEST_FILES / src, root / dst)
        (root / dst).chmod(0o755)
    order = []
    for module in _module_files(release):
        shutil.copy2(module, root / "lib/modules" / module.name)
        order.append(module.name)
    (root / "lib/modules/order").write_text("\n".join(order) + "\n")
    etc = root / "etc"
    # Login names must resolve without NSS modules: glibc's files backend is built in.
    # The login shell is busybox's: under emulation every SSH command pays for its shell's start-up, and a
    # static busybox starts in half the time of the dynamically linked bash (Vagrant runs ~30 per machine).
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\ncore:x:0:0:CoreOS Admin:/home/core:/bin/sh\n")
    (etc / "shadow").write_text("root:*:1::::::\ncore:*:1::::::\n")
    (etc / "group").write_text("root:x:0:\ncore:x:0:\n")
    (etc / "shells").write_text("/bin/sh\n")
    (etc / "os-release").write_text('NAME="coreos-lab tiny box"\nID=linux\nPRETTY_NAME="coreos-lab tiny box"\n')
    (etc / "hosts").write_text("127.0.0.1\tlocalhost\n")
    (etc / "hostname").symlink_to("/var/lib/hostname")  # Vagrant's change_host_name writes it; keep it on disk
    # Vagrant with forward_agent probes `printf $SSH_AUTH_SOCK`, which fails (printf without arguments) when the
    # host has no agent to forward (dropbear then sets no socket); a placeholder keeps that probe, and only it,
    # working.
    (etc / "profile").write_text(
        "export PATH=/bin\nexport HOME=${HOME:-/home/core}\n"
        '[ -n "$SSH_AUTH_SOCK" ] || export SSH_AUTH_SOCK=/run/no-ssh-agent\n'
    )
    (etc / "resolv.conf").write_text("")
    if flavour not in QEMU_IMAGE_FLAVOURS:  # those take their key from fw_cfg at boot, or have none
        key = root / "home/core/.ssh/authorized_keys"
        key.write_text(vagrant_insecure_public_key())
        key.chmod(0o600)
    (root / "home/core/.ssh").chmod(0o700)
    (etc / "dropbear").symlink_to("/var/lib/dropbear")  # host keys persist across boots


def _initramfs(root: Path, out: Path) -> None:
    files = subprocess.run(["find", "."], cwd=root, capture_output=True, check=True).stdout
    cpio = subprocess.run(
        ["cpio", "-o", "-H", "newc", "--owner=0:0", "--quiet"], cwd=root, input=files, capture_output=True, check=True
    ).stdout
    gz = subprocess.run(["gzip", "-1"], input=cpio, capture_output=True, check=True).stdout
    out.write_bytes(gz)


def _disk(kernel: Path, initrd: Path, raw: Path, work: Path, flavour: str) -> None:
    """MBR + one bootable ext4 partition at 1 MiB holding extlinux, the kernel and the initramfs."""
    with raw.open("wb") as f:
        f.truncate(DISK_MIB << 20)
    subprocess.run(["sfdisk", "-q", str(raw)], input=b"label: dos\nstart=2048, type=83, bootable\n", check=True)
    loop = subprocess.run(
        ["losetup", "--find", "--show", "--offset", str(1 << 20), str(raw)], capture_output=True, text=True, check=True
    ).stdout.strip()
    mnt = work / "mnt"
    mnt.mkdir()
    mounted = False
    try:
        # extlinux cannot boot from 64bit/metadata_csum ext4.
        subprocess.run(["mkfs.ext4", "-q", "-F", "-O", "^64bit,^metadata_csum", "-L", "tinybox", loop], check=True)
        subprocess.run(["mount", loop, str(mnt)], check=True)
        mounted = True
        boot = mnt / "boot"
        boot.mkdir()
        shutil.copy2(kernel, boot / "vmlinuz")
        shutil.copy2(initrd, boot / "initrd.img")
        (boot / "extlinux.conf").write_text(
            "DEFAULT tinybox\nTIMEOUT 1\nLABEL tinybox\n  LINUX /boot/vmlinuz\n  INITRD /boot/initrd.img\n"
            "  APPEND console=ttyS0 quiet panic=5\n"
        )
        (mnt / "state").mkdir()
        for src, dst in DISK_BINARIES[flavour].items():
            (mnt / dst).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, mnt / dst)
        subprocess.run(["extlinux", "--install", str(boot)], check=True, capture_output=True)
    finally:
        if mounted:
            subprocess.run(["umount", str(mnt)], check=True)
        subprocess.run(["losetup", "-d", loop], check=True)
    mbr = Path("/usr/lib/syslinux/mbr/mbr.bin").read_bytes()
    with raw.open("r+b") as f:
        f.write(mbr[:440])


def _box_tar(image: Path, out: Path) -> None:
    meta = json.dumps({"provider": "libvirt", "format": "qcow2", "virtual_size": 1}).encode()
    tmp = out.with_suffix(".part")
    with tarfile.open(tmp, "w:gz", compresslevel=1) as tar:
        for name, data in [("metadata.json", meta), ("Vagrantfile", (GUEST_FILES / "Vagrantfile").read_bytes())]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        tar.add(image, arcname="box.img")
    tmp.replace(out)


def cache_dir() -> Path:
    base = os.environ.get("LAB_TEST_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "coreos-lab-tests"
    )
    return Path(base)


def build_image(cache: Path | None = None, flavour: str = "coreos") -> Path:
    """Path to the tiny box's disk of `flavour`, a qcow2 image; built on first use, then reused while inputs are
    unchanged."""
    if flavour not in FLAVOURS:
        raise ValueError(f"no tiny box flavour {flavour!r}; flavours: {', '.join(FLAVOURS)}")
    kernel, release = _kernel()
    cache = cache or cache_dir()
    out = cache / f"tinybox-{flavour}-{_inputs_digest(kernel, release, flavour)}.qcow2"
    if out.exists():
        return out
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix="build-") as tmp:
        work = Path(tmp)
        root = work / "root"
        _populate_root(root, release, flavour)
        initrd = work / "initrd.img"
        _initramfs(root, initrd)
        raw = work / "disk.raw"
        _disk(kernel, initrd, raw, work, flavour)
        image = work / "box.img"
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(image)], check=True)
        image.replace(out)
    return out


def build_box(cache: Path | None = None, flavour: str = "coreos") -> Path:
    """Path to the tiny libvirt box (.box, a tar.gz) of `flavour` (coreos or flatcar): its disk (`build_image`)
    with metadata and the box Vagrantfile; built on first use, then reused while inputs are unchanged."""
    image = build_image(cache, flavour)
    out = image.with_name(image.name.replace(f"tinybox-{flavour}-", f"tinybox-{flavour}-libvirt-")).with_suffix(".box")
    if not out.exists():
        _box_tar(image, out)
    return out


if __name__ == "__main__":
    import sys

    print(build_box(flavour=sys.argv[1] if len(sys.argv) > 1 else "coreos"))
