#!/usr/bin/env bash
# Install everything sealbox needs on Debian 12 (run as root): system tools, then a Python venv in .venv.
# Idempotent: safe to run again. Prints what it does.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  # building images
  mmdebstrap dpkg-dev e2fsprogs zstd binutils ca-certificates cpio
  # reproducibility checks: verify-reproducible (disorderfs needs fuse3) and the test that runs reprotest itself
  reprotest disorderfs fuse3
  # running sandboxes
  qemu-system-x86 qemu-utils ovmf nftables iproute2 bubblewrap openssh-client util-linux
  # measuring and attesting (tests compare against these reference tools)
  pesign sbsigntool systemd-boot-efi swtpm swtpm-tools
  # Python
  python3 python3-venv python3-pip
)

if [ "$(id -u)" -ne 0 ]; then
  echo "setup: run as root (sealbox builds images with mmdebstrap and runs VMMs in network namespaces)" >&2
  exit 1
fi
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  echo "setup: Debian packages present"
  # tests fetch a kernel and helpers with apt-get download: make sure the package lists exist
  [ -n "$(ls -A /var/lib/apt/lists/ 2>/dev/null | grep -v -e lock -e partial)" ] || apt-get update -q
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
echo "setup: installing sealbox and its pinned Python dependencies into .venv"
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
echo "setup: done ($(.venv/bin/sealbox --version))"
