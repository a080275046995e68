#!/usr/bin/env bash
# Set up everything, then run the whole test suite: unit tests, then integration tests with real
# mmdebstrap, QEMU (TCG here), nftables and network namespaces. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export SEALBOX_STATE_DIR=${SEALBOX_STATE_DIR:-/var/lib/sealbox-test}
exec .venv/bin/python -m pytest -q "$@"
