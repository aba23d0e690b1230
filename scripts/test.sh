#!/usr/bin/env bash
# The whole test suite: style, unit and golden tests, and the integration
# tests against the real containerd, runc and kubelet of the pinned bundle.
# Installs what it needs first (see scripts/install-deps.sh). Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS

bash scripts/install-deps.sh
export SELFNODE_BUNDLE=${SELFNODE_BUNDLE:-/var/cache/selfnode/bundle}

echo "[test] cargo fmt --check" >&2
cargo fmt --all --check
echo "[test] cargo clippy" >&2
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "[test] cargo test (unit, golden, integration)" >&2
cargo test --workspace --no-fail-fast
echo "[test] done in $((SECONDS - start))s" >&2
