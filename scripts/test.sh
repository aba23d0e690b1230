#!/usr/bin/env bash
# The whole test suite: style, unit and golden tests, and the integration
# tests against the real containerd, runc and kubelet of the pinned bundle.
# Installs what it needs first (see scripts/install-deps.sh). Run as root.
#
#   bash scripts/test.sh          the whole suite (what CI runs, .ci/run)
#   bash scripts/test.sh --fast   the fast tier, for every change: style
#                                 (fmt, clippy on every target, tests/
#                                 included) and the unit and golden tests;
#                                 installs nothing, needs no root, no bundle
#                                 (only protoc, which install-deps.sh adds)
#
# The tiers split by where a test lives: the unit and golden tests are in
# each crate's src/ (they need nothing: fakes, tempdirs, snapshot files
# under tests/golden/), and every file under */tests/ runs against real
# components (containerd, runc, kubelet, etcd, openssl, QEMU, network
# namespaces). A new test lands in the right tier by where it is written.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS

style() {
  echo "[test] cargo fmt --check" >&2
  cargo fmt --all --check
  echo "[test] cargo clippy" >&2
  cargo clippy --workspace --all-targets --quiet -- -D warnings
}

case "${1:-}" in
  "") ;;
  --fast)
    # The gRPC crates' build scripts (etcd-client, containerd-client) run
    # protoc: say so before cargo's backtrace does.
    if ! command -v protoc >/dev/null || [[ ! -e /usr/include/google/protobuf/timestamp.proto ]]; then
      echo "error: the fast tier compiles the gRPC crates, whose build scripts need protoc and its well-known types (Debian: protobuf-compiler libprotobuf-dev). Run 'bash scripts/install-deps.sh' once (root), or install those two packages, and run again." >&2
      exit 2
    fi
    style
    echo "[test] cargo test (unit and golden: --lib --bins)" >&2
    # No bundle here: one that a unit test reached for would make it pass
    # only on machines that have one.
    SELFNODE_BUNDLE=/nonexistent/the-fast-tier-has-no-bundle \
      cargo test --workspace --lib --bins
    echo "[test] fast tier done in $((SECONDS - start))s" >&2
    exit 0
    ;;
  *)
    echo "usage: bash scripts/test.sh [--fast]" >&2
    exit 2
    ;;
esac

bash scripts/install-deps.sh

# The suite needs room for its own files: the test build (about 5 GiB), up to
# three test hosts at once (about 1.5 GiB each, their images included) and
# the snapshots and checkpoints they write. The test nodes' kubelets evict
# below 1 GiB free (absolute thresholds, node/src/agent/config.rs), so a
# disk short of this would show up as pods that never start, far from the
# cause. Refuse at once instead, with the cause.
need_gib=25
read -r avail < <(df --output=avail -k / | awk 'NR==2{print $1}')
if (( avail / 1024 / 1024 < need_gib )); then
  echo "error: only $((avail / 1024 / 1024)) GiB of / is free; the tests need about ${need_gib} GiB for their build, their test hosts and what those write. Free space (e.g. 'cargo clean' in old checkouts) and run again." >&2
  exit 1
fi
export SELFNODE_BUNDLE=${SELFNODE_BUNDLE:-/var/cache/selfnode/bundle}
# The previous Kubernetes minor's bundle (versions-previous.env), which the
# upgrade test starts from: about ten minutes of Go build the first time,
# then cached in /var/cache/selfnode/previous like the current one. It is
# built beside the tests, at the lowest CPU priority (they mostly wait on
# pods), and the upgrade test waits for its lock (testkit).
prev_pid=""
if [[ -z "${SELFNODE_PREVIOUS_BUNDLE:-}" ]]; then
  mkdir -p /var/cache/selfnode/previous /var/cache/selfnode/logs
  prev_log=/var/cache/selfnode/logs/previous-bundle-build.log
  echo "[test] building the previous minor's bundle beside the tests (fixtures/build-previous-bundle.sh, log: $prev_log)" >&2
  nice -n 19 bash fixtures/build-previous-bundle.sh >"$prev_log" 2>&1 &
  prev_pid=$!
  export SELFNODE_PREVIOUS_BUNDLE_LOCK=/var/cache/selfnode/previous/.lock
fi

# A node of this host's own (scripts/up.sh's cluster) holds the ports the
# test hosts in this network namespace need (the kubelet's 10250 first):
# with it running, the multi-host and init tests fail far from the cause.
# Stop it for the tests ('selfnode stop': agent, kubelet, containers,
# containerd) and start its agent again afterwards, pass or fail; the
# cluster then comes back by itself from its checkpoint, as after a power
# cut. Its files are left alone.
host_status=$(command -v selfnode >/dev/null && selfnode status -o json 2>/dev/null || true)
if grep -q '"running": true' <<<"$host_status"; then
  echo "[test] this host runs a selfnode node (scripts/up.sh's cluster); stopping it for the tests, its agent starts again afterwards" >&2
  selfnode stop
  restart_host_node() {
    mkdir -p /var/log/selfnode
    echo "[test] starting this host's selfnode agent again (log: /var/log/selfnode/agent.log); 'selfnode status' shows it coming back" >&2
    nohup selfnode agent >>/var/log/selfnode/agent.log 2>&1 </dev/null &
  }
  trap restart_host_node EXIT
fi

style
echo "[test] cargo test (unit, golden, integration)" >&2
rc=0
cargo test --workspace --no-fail-fast || rc=$?
if [[ -n "$prev_pid" ]] && ! wait "$prev_pid"; then
  echo "error: the previous bundle's build failed (the upgrade test needs it); the end of $prev_log:" >&2
  tail -20 "$prev_log" >&2
  rc=1
fi
echo "[test] done in $((SECONDS - start))s" >&2
exit "$rc"
