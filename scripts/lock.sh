#!/usr/bin/env bash
# Regenerate requirements.lock: the whole Python dependency tree of sealbox with every extra (runtime, optional,
# test, lint) plus the build backend, each pinned with the sha256 of every published file. scripts/setup.sh
# installs it with `pip install --require-hashes`. Run after changing a pin in pyproject.toml; commit the result.
# Uses uv (pinned below) from a throwaway venv; needs only python3 and the package index.
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.8
# the build backend: `pip install --no-build-isolation -e .` uses these instead of fetching unpinned ones
BUILD_PINS=$'setuptools==84.2.1\nwheel==0.48.0'

work=$(mktemp -d "${TMPDIR:-/tmp}/sealbox-lock.XXXXXX")
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q --disable-pip-version-check "uv==$UV_VERSION"
printf '%s\n' "$BUILD_PINS" >"$work/build.in"
"$work/venv/bin/uv" pip compile --quiet --generate-hashes --python-version 3.11 --python-platform x86_64-unknown-linux-gnu \
  --all-extras --no-emit-package sealbox --custom-compile-command "bash scripts/lock.sh" \
  --output-file requirements.lock pyproject.toml "$work/build.in"
sed -i "s#$work/build.in#scripts/lock.sh (build backend)#" requirements.lock
echo "lock: wrote requirements.lock ($(grep -c '^[a-z]' requirements.lock) packages)"
