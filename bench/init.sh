#!/usr/bin/env bash
# Benchmark: `selfnode init` against `kubeadm init` on this machine, with the
# same bundle's binaries and images, alternating runs. Root only; nothing else
# may run a cluster on this host meanwhile (both use ports 6443, 2379, 10250).
#
#   bash bench/init.sh [RUNS]        # default 3 runs of each
#
# Writes bench/results/init-<date>.md (medians, ratio, every run).
#
# selfnode: a fresh host directory (--root), agent started and healthy, then
#   the time of `selfnode init --allow-workloads` until it returns (pivoted,
#   temporary plane gone, node, kube-proxy and CoreDNS Ready); also "to
#   pivot" (when wait_self_hosted_ready ended, since the sequence started) and
#   the floor: etcd + kube-apiserver from start to /readyz (from the end of
#   write_node_identity to the end of start_temp_apiserver).
# kubeadm: on the real root (kubeadm has no --root), containerd and the
#   kubelet supplied by `selfnode agent` (same binaries, same images, same
#   containerd config); the time of `kubeadm init` until it returns, and until
#   the control-plane pods are Ready. kubeadm installs no pod network, so its
#   node stays NotReady: compare "control plane Ready" columns with each other.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
work=$(mktemp -d /tmp/selfnode-bench.XXXXXX)
. bench/lib.sh
cleanup() { stop_agent; rm -rf "$work"; }
trap cleanup EXIT

run_selfnode() {
  local root="$work/sn" t0 t1 json
  rm -rf "$root"; mkdir -p "$root"
  start_agent "$root"
  t0=$(now)
  json=$("$S" --root "$root" init --bundle "$B" --allow-workloads -o json)
  t1=$(now)
  local total pivot floor
  total=$(secs "$t0" "$t1")
  # Steps of concurrent lanes overlap: wall-clock ends (finished_at), not sums.
  pivot=$(echo "$json" | python3 -c 'import json,sys; s={x["step"]:x["finished_at"] for x in json.load(sys.stdin)["steps"]}; print("%.1f" % s["wait_self_hosted_ready"])')
  floor=$(echo "$json" | python3 -c 'import json,sys; s={x["step"]:x["finished_at"] for x in json.load(sys.stdin)["steps"]}; print("%.1f" % (s["start_temp_apiserver"]-s["write_node_identity"]))')
  stop_agent
  umount -R "$root" 2>/dev/null || true
  rm -rf "$root"
  echo "$total $pivot $floor"
}

: >"$work/sn.txt"; : >"$work/ka.txt"
for i in $(seq 1 "$RUNS"); do
  echo "[bench] run $i/$RUNS: selfnode init" >&2
  run_selfnode >>"$work/sn.txt"
  echo "[bench] run $i/$RUNS: kubeadm init" >&2
  kubeadm_up "$work/ka.txt"
  kubeadm_down
done

sn_total=$(cut -d' ' -f1 "$work/sn.txt" | median)
sn_pivot=$(cut -d' ' -f2 "$work/sn.txt" | median)
sn_floor=$(cut -d' ' -f3 "$work/sn.txt" | median)
ka_exit=$(cut -d' ' -f1 "$work/ka.txt" | median)
ka_ready=$(cut -d' ' -f2 "$work/ka.txt" | median)
out=bench/results/init-$(date +%Y-%m-%d).md
{
  echo "# selfnode init vs kubeadm init ($(date -u +%Y-%m-%dT%H:%MZ))"
  echo
  echo "Machine: $(machine). Command: \`bash bench/init.sh $RUNS\`."
  echo
  echo "| median of $RUNS runs | seconds |"
  echo "|---|---|"
  echo "| selfnode: control plane Ready (self-hosted pods Ready, /readyz ok) | $sn_pivot |"
  echo "| kubeadm: control plane Ready (static pods Ready) | $ka_ready |"
  echo "| ratio selfnode / kubeadm (control plane Ready) | $(ratio "$sn_pivot" "$ka_ready") |"
  echo "| selfnode init returns (pivoted, temporary plane gone, node + kube-proxy + CoreDNS Ready) | $sn_total |"
  echo "| kubeadm init returns | $ka_exit |"
  echo "| floor: etcd + kube-apiserver from start to /readyz (selfnode's temporary plane) | $sn_floor |"
  echo
  echo "Every run (selfnode: total pivot floor; kubeadm: exit control-plane-ready):"
  echo
  paste -d'|' "$work/sn.txt" "$work/ka.txt" | sed 's/^/    /'
} >"$out"
cat "$out"
