#!/usr/bin/env bash
# Install everything sealbox, its tests and its benchmarks need on Debian 12 (run as root): system tools, then a
# Python venv in .venv with the hash-pinned dependency tree of requirements.lock. Idempotent: safe to run again.
# apt and pip stay quiet unless they fail; then their log is shown.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  # building images
  mmdebstrap dpkg-dev e2fsprogs zstd binutils ca-certificates cpio passwd
  # bootable disk images (ESP via mkfs.fat + mtools, qcow2 via qemu-img; sgdisk checks GPTs in tests)
  dosfstools mtools gdisk
  # dm-verity hash trees for disk images with a verity root (veritysetup); the bob disk tests (cryptsetup: LUKS2)
  cryptsetup-bin
  # reproducibility checks: verify-reproducible (disorderfs needs fuse3) and the test that runs reprotest itself
  reprotest disorderfs fuse3
  # container images (output.formats = ["oci"]): the tests load and run them with podman (runc: crun refuses hybrid
  # cgroup hosts) and read them with skopeo
  podman runc skopeo
  # running sandboxes
  qemu-system-x86 qemu-utils ovmf nftables iproute2 bubblewrap openssh-client util-linux
  # cloud-profile tests: a real DHCP server (dnsmasq, no DNS service) stands in for Azure's and GCP's on a test link
  dnsmasq-base
  # measuring and attesting (tests compare against these reference tools)
  pesign sbsigntool systemd-boot-efi swtpm swtpm-tools
  # the guest's reseed program is checked against strace's decoding of its ioctls (binutils reassembles it)
  strace
  # benchmarks: a static C toolchain for the trivial-init baseline of bench/sandbox_bench.py
  gcc libc6-dev
  # the gui module: per-sandbox password hashes (openssl passwd); its test logs in with a real RDP client under a
  # virtual X server and checks a screenshot (ImageMagick)
  openssl xvfb freerdp2-x11 imagemagick
  # the bob module: its mode-switch test flushes connection tracking in a test namespace with the guest's own tool;
  # its workload test runs podman rootless as an unprivileged uid (newuidmap/newgidmap, slirp4netns), as the guest does
  conntrack uidmap slirp4netns
  # Python
  python3 python3-venv python3-pip
)

if [ "$(id -u)" -ne 0 ]; then
  echo "setup: run as root (sealbox builds images with mmdebstrap and runs VMMs in network namespaces)" >&2
  exit 1
fi

LOG=$(mktemp "${TMPDIR:-/tmp}/sealbox-setup.XXXXXX.log")
trap 'rm -f "$LOG"' EXIT
# quiet: run "$@" with its output in $LOG; on failure show the log's tail and keep the whole log
quiet() {
  if ! "$@" >>"$LOG" 2>&1; then
    echo "setup: failed: $*" >&2
    tail -n 60 "$LOG" >&2
    keep=/var/tmp/sealbox-setup-failed.log
    cp "$LOG" "$keep" && echo "setup: the whole log is in $keep" >&2
    exit 1
  fi
}

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  quiet apt-get update
  quiet env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
else
  echo "setup: Debian packages present"
  # tests fetch a kernel and helpers with apt-get download: make sure the package lists exist
  if [ -z "$(find /var/lib/apt/lists/ -maxdepth 1 -name '*_Packages*' -print -quit 2>/dev/null)" ]; then
    quiet apt-get update
  fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)"
  quiet "$PY" -m venv .venv
fi
# The whole dependency tree (runtime, optional extras, test and lint tools, build backend) is pinned with hashes in
# requirements.lock (regenerate with scripts/lock.sh); sealbox itself goes in without resolving anything again.
echo "setup: installing sealbox and its hash-pinned Python dependencies (requirements.lock) into .venv"
quiet .venv/bin/python -m pip install --disable-pip-version-check --require-hashes -r requirements.lock
quiet .venv/bin/python -m pip install --disable-pip-version-check --no-deps --no-build-isolation -e .
echo "setup: done ($(.venv/bin/sealbox --version))"
