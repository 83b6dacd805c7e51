#!/usr/bin/env bash
# Sets up mvm on a fresh Debian/Ubuntu host: system packages, npm dependencies, build,
# the default image, then runs one real sandbox. Run as root (or through sudo).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "error: run this as root, e.g. sudo scripts/setup.sh" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
PACKAGES=(bubblewrap mmdebstrap debian-archive-keyring util-linux uidmap busybox-static iproute2 python3 ca-certificates cryptsetup-bin e2fsprogs qemu-system-x86 cpio dmsetup gcc libc6-dev docker-registry umoci skopeo zstd openssl python3-pip python3-setuptools python3-pytest python3-msgpack python3-hypothesis mypy tmux)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing system packages: ${missing[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v node >/dev/null || [ "$(node -p 'process.versions.node.split(".")[0]')" -lt 20 ]; then
  echo "==> installing Node.js from the distribution"
  apt-get install -y -qq nodejs npm >/dev/null || true
  if ! command -v node >/dev/null || [ "$(node -p 'process.versions.node.split(".")[0]')" -lt 20 ]; then
    echo "error: mvm needs Node.js >= 20 (found: $(node --version 2>/dev/null || echo none))" >&2
    echo "hint: install Node.js 20 or newer from your distribution or nodejs.org, then run this again" >&2
    exit 1
  fi
fi

echo "==> installing npm dependencies"
npm ci --no-audit --no-fund --loglevel=error
echo "==> building"
npm run build --silent
# The Python SDK is pure Python with no runtime dependencies: installed for the system python3
# into /usr/local (pip's --break-system-packages only lifts Debian 12's guard; no Debian-managed
# file is touched). Use a venv instead for a per-project copy (docs/PYTHON.md).
echo "==> installing the Python SDK (python/)"
pip_flags=(--quiet --no-deps --no-build-isolation --disable-pip-version-check)
# Debian's own interpreter, which the apt packages above serve (pytest, msgpack, mypy, wheel), even
# when another python3 (pyenv, a venv) comes first on PATH.
py=/usr/bin/python3
[ -x "$py" ] || py=python3
if "$py" -m pip install --help | grep -q -- --break-system-packages; then pip_flags+=(--break-system-packages); fi
"$py" -m pip install "${pip_flags[@]}" ./python
rm -rf python/build python/mvm.egg-info

mvmctl() { node packages/cli/bin/mvmctl.cjs "$@"; }
ln -sf "$PWD/packages/cli/bin/mvmctl.cjs" /usr/local/bin/mvmctl
chmod +x packages/cli/bin/mvmctl.cjs

# QEMU runs as an unprivileged uid: hardware KVM is used only when that uid can open /dev/kvm.
# udev gives it to group kvm (0660) on most hosts; a host without udev leaves it root-only.
if [ -c /dev/kvm ] && { [ -d /sys/module/kvm_intel ] || [ -d /sys/module/kvm_amd ]; } && [ "$(stat -c %a /dev/kvm)" = 600 ]; then
  echo "==> giving /dev/kvm to group kvm (0660), as udev does"
  getent group kvm >/dev/null || groupadd --system kvm
  chgrp kvm /dev/kvm
  chmod 0660 /dev/kvm
fi

# Debian image builds run as this unprivileged user (mmdebstrap --mode=unshare), never as root.
# It needs subordinate uid and gid ranges of 65536 ids that overlap no other user's.
BUILD_USER=mvm-build
if ! getent passwd "$BUILD_USER" >/dev/null; then
  echo "==> creating the image build user ($BUILD_USER)"
  useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$BUILD_USER"
fi
for f in /etc/subuid /etc/subgid; do
  touch "$f"
  if ! awk -F: -v u="$BUILD_USER" '$1 == u && $3 >= 65536 { found = 1 } END { exit !found }' "$f"; then
    start=$(awk -F: 'BEGIN { m = 100000 } NF == 3 && $2 + $3 > m { m = $2 + $3 } END { print m }' /etc/subuid /etc/subgid)
    echo "==> giving $BUILD_USER the ids $start-$((start + 65535)) in $f"
    if [ "$f" = /etc/subuid ]; then usermod --add-subuids "$start-$((start + 65535))" "$BUILD_USER"; else usermod --add-subgids "$start-$((start + 65535))" "$BUILD_USER"; fi
  fi
done

echo "==> checking the host"
mvmctl doctor || true
echo "==> building the default image (debian:bookworm+python3), keeping its .deb files for the build tests"
force=()
[ -n "$(ls /var/cache/mvm/debs 2>/dev/null)" ] || force=(--force)
# Builds reach the mirror only through the egress gateway, whose address floor refuses private and
# special addresses. A mirror this host reaches on such an address (a LAN apt cache, or a name
# /etc/hosts pins) is vouched for here, by the addresses this host resolves its mirror hosts to.
mirror_hosts=$(grep -rhoE 'https?://[A-Za-z0-9.-]+' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null | sed -E 's#https?://##' | sort -u || true)
vouched=$(for h in $mirror_hosts; do getent ahosts "$h" || true; done | awk '{ print $1 }' | sort -u | paste -sd, -)
MVM_BUILD_MIRROR_ADDRESSES="$vouched" MVM_KEEP_DEBS_DIR=/var/cache/mvm/debs mvmctl image build "${force[@]}" debian:bookworm+python3
echo "==> running a sandbox on the container tier"
MVM_ACK_CONTAINER_TIER=1 mvmctl run --backend namespace -- python3 -c 'import os, platform; print("hello from sandbox, uid", os.getuid(), "kernel", platform.release())'
echo "==> running a sandbox on the default tier (the first VM sandbox fetches the guest kernel and saves a booted VM)"
MVM_ACK_CONTAINER_TIER=1 mvmctl run -- python3 -c 'import os, platform; print("hello from sandbox, uid", os.getuid(), "kernel", platform.release())'
echo "==> ready: try 'mvmctl run -- sh -c \"id; ls /\"'"
