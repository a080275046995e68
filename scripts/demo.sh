#!/usr/bin/env bash
# The main job on the built-in default: set up, build the default image, boot it as a sandbox, exec in it,
# tear it down — showing each step. Run as root on Debian 12.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
SB=.venv/bin/sealbox
NAME=sealbox-demo
source scripts/style.sh  # step HEADING: bold on a terminal only, never with NO_COLOR

step "host prerequisites (sealbox doctor)"
$SB doctor || true
step "build the default image (first time: bootstrap with mmdebstrap; later: reused while nothing changed)"
$SB build
step "start it as a sandbox (jailed QEMU, own network namespace; TCG if KVM cannot run vCPUs)"
$SB rm --force "$NAME" >/dev/null 2>&1 || true
trap '$SB rm --force "$NAME" >/dev/null 2>&1 || true' EXIT
$SB run build/default --name "$NAME"
step "exec in it"
$SB exec "$NAME" -- uname -a
$SB exec "$NAME" -- sh -c 'echo "user: $(id -un), hostname: $(hostname)"; touch /probe 2>&1 || echo "(/ is read-only, as it should be)"'
step "list sandboxes"
$SB ps
step "remove it (every host resource it created is undone)"
$SB rm --force "$NAME"
trap - EXIT
$SB ps --all
step "verify a TDX quote offline (a public vector with its vendored collateral, checked at a time inside its window)"
$SB attest quote tests/vectors/tdx/dcap-qvl/tdx_quote --collateral tests/vectors/tdx/dcap-qvl/tdx_quote_collateral.json \
  --at 2025-07-01T00:00:00Z
step "done"
