#!/usr/bin/env bash
# Installs everything selfnode needs on a fresh Debian 12 machine, as root:
# Debian packages, then the pinned upstream bundle (fixtures/build-bundle.sh,
# cached under /var/cache/selfnode so a reused machine skips the Go build).
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pkg in protobuf-compiler openssl runc containernetworking-plugins iproute2 iptables conntrack kmod file gcc util-linux; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if ((${#need[@]})); then
  echo "[deps] installing Debian packages: ${need[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

command -v cargo >/dev/null || { echo "error: cargo not found; install Rust (rustup) first" >&2; exit 1; }
command -v go >/dev/null || { echo "error: go not found; install Go >= 1.26 first" >&2; exit 1; }

# The upstream components at the versions pinned in versions.env.
bash fixtures/build-bundle.sh >&2
