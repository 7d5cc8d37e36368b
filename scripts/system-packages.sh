# Debian packages the tool and its tests need; sourced by scripts/install and scripts/test.
# Vagrant without recommends: with them it pulls ~1.2 GB (libvirt, a kernel).
RUNTIME_PACKAGES=(python3 python3-venv python3-pip curl gpg openssh-client)
NO_RECOMMENDS_PACKAGES=(vagrant)
# Real VMs for the libvirt tests (marker libvirt): vagrant-libvirt + libvirt + QEMU, and what the tiny
# CoreOS-like test box is built from (a Debian kernel, busybox, dropbear, extlinux). No recommends: ~1 GB less.
LIBVIRT_TEST_PACKAGES=(vagrant-libvirt libvirt-daemon-system qemu-system-x86 dnsmasq-base iptables
  linux-image-amd64 busybox-static dropbear-bin extlinux syslinux-common cpio e2fsprogs fdisk)
TEST_PACKAGES=(etcd-server etcd-client openssh-server iproute2 nginx procps)
# qemu-img: the fake Flatcar QEMU images the libvirt box conversion is tested with (and the tiny box's disk).
TEST_PACKAGES+=(qemu-utils)
# docker-registry and skopeo: a real upstream registry for the image tests, and a reference client.
TEST_PACKAGES+=(docker-registry skopeo)
# Docker's own client against the mirror's registry (marker docker): a private dockerd, vfs, no networking.
TEST_PACKAGES+=(docker.io)
# rsync: the reference bench/publish.py compares `lab mirror publish` to a directory with.
TEST_PACKAGES+=(rsync)

# apt_install PKG…: install what is missing, with --no-install-recommends; apt-get update once if needed.
apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing system packages: ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
