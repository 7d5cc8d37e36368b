# Debian packages the tool and its tests need; sourced by scripts/install and scripts/test.
# Vagrant without recommends: with them it pulls ~1.2 GB (libvirt, a kernel).
RUNTIME_PACKAGES=(python3 python3-venv python3-pip curl gpg openssh-client)
NO_RECOMMENDS_PACKAGES=(vagrant)
TEST_PACKAGES=(etcd-server etcd-client openssh-server iproute2 nginx procps)

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
