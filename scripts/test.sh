#!/usr/bin/env bash
# Set up everything, then run the whole test suite: unit tests, then integration tests with real
# mmdebstrap, QEMU (TCG here), nftables and network namespaces. Extra arguments go to pytest
# (`--no-setup` first skips scripts/setup.sh, as .ci/run has just run it).
# SEALBOX_STRICT=1 (or CI=true) turns every skip that is not allow-listed in tests/strict.py into a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--no-setup" ]; then
  shift
else
  bash scripts/setup.sh
fi
export SEALBOX_STATE_DIR=${SEALBOX_STATE_DIR:-/var/lib/sealbox-test}
exec .venv/bin/python -m pytest -q "$@"
