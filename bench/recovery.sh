#!/usr/bin/env bash
# Benchmark: the control plane coming back after an agent restart and after a
# power cut, selfnode's self-hosted single-node cluster against a kubeadm
# single-node cluster (static pods) on the same machine, with the same
# bundle, and `selfnode agent` supervising containerd and the kubelet for
# both. Root only; nothing else may run a cluster on this host meanwhile.
#
#   bash bench/recovery.sh [CUTS]     # default 5 of each kind, per cluster
#
# Writes bench/results/recovery-<date>.md (medians, ratios, every run).
#
# Agent restart: SIGTERM to the agent, wait for it to exit, start it again.
# Power cut: SIGKILL to the agent's process tree and to every shim and
#   container of the host at once, then what a reboot empties goes (the
#   host's /run/selfnode with containerd's state, the tmpfs mounts under it
#   and the kubelet's pods, the pods' network namespaces), then the agent
#   starts. Measured from the agent's start: /readyz through admin.conf, and
#   the control plane Ready (apiserver, controller-manager, scheduler pods;
#   for selfnode the self-hosted apiserver pod, not the checkpoint copy).
set -euo pipefail
cd "$(dirname "$0")/.."
CUTS=${1:-5}
work=$(mktemp -d /tmp/selfnode-bench.XXXXXX)
. bench/lib.sh
netns_before=$(ls /run/netns 2>/dev/null || true)
cleanup() { stop_agent; rm -rf "$work"; }
trap cleanup EXIT

# Every process of the host rooted at $1: the agent's tree and every shim's.
host_processes() {
  local needle="$1/run/selfnode/containerd" roots pids
  needle=${needle//\/\//\/}
  roots="$agent_pid $(pgrep -f -- "$needle" || true)"
  pids=$roots
  for _ in 1 2 3 4 5 6; do
    for p in $pids; do pids="$pids $(pgrep -P "$p" || true)"; done
    pids=$(echo "$pids" | tr ' ' '\n' | sort -un | tr '\n' ' ')
  done
  echo "$pids"
}

power_cut() { # root
  local root=$1 pids
  pids=$(host_processes "$root")
  # shellcheck disable=SC2086
  kill -KILL $pids 2>/dev/null || true
  wait "$agent_pid" 2>/dev/null || true
  for p in $pids; do while kill -0 "$p" 2>/dev/null; do sleep 0.1; done; done
  agent_pid=""
  for dir in "$root/run/selfnode" "$root/var/lib/kubelet/pods"; do
    dir=${dir//\/\//\/}
    findmnt -rn -o TARGET | grep "^$dir/" | sort -r | xargs -r -n1 umount -l
  done
  for ns in $(ls /run/netns 2>/dev/null || true); do
    echo "$netns_before" | grep -qx "$ns" && continue
    umount -l "/run/netns/$ns" 2>/dev/null || true; rm -f "/run/netns/$ns"
  done
  rm -rf "${root%/}/run/selfnode"
}

agent_restart() { # root
  kill -TERM "$agent_pid"; wait "$agent_pid" 2>/dev/null || true; agent_pid=""
}

# root kubeconfig apiserver-pattern kind: prints "<readyz> <control plane Ready>"
measure() {
  local root=$1 kc=$2 api=$3 kind=$4 t0 t1 t2 since=""
  "$kind" "$root"
  t0=$(now)
  # After a cut every container starts again: wait for the new ones.
  [ "$kind" = power_cut ] && since=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  launch_agent "$root"
  until readyz "$kc"; do sleep 0.2; done
  t1=$(now)
  until cp_ready "$kc" "$api" "$since"; do sleep 0.5; done
  t2=$(now)
  echo "$(secs "$t0" "$t1") $(secs "$t0" "$t2")"
  # Let the agent finish coming up (a checkpoint copy handed back) before
  # the next round.
  for _ in $(seq 1 300); do "$S" --root "$root" status >/dev/null 2>&1 && break; sleep 0.5; done
}

settle() { # kubeconfig apiserver-pattern: Ready and calm before the next cut
  until cp_ready "$1" "$2"; do sleep 0.5; done
  sleep 10
}

: >"$work/sn-restart.txt"; : >"$work/sn-cut.txt"; : >"$work/ka-restart.txt"; : >"$work/ka-cut.txt"

echo "[bench] selfnode: init" >&2
sn="$work/sn"; mkdir -p "$sn"
start_agent "$sn"
"$S" --root "$sn" init --bundle "$B" --allow-workloads >/dev/null
sn_kc="$sn/etc/kubernetes/admin.conf"
sn_api='kube-apiserver-[a-z0-9]{5}'
until "$S" --root "$sn" status -o json | grep -q '"detail": ".*last known good'; do sleep 1; done
for i in $(seq 1 "$CUTS"); do
  echo "[bench] selfnode: agent restart $i/$CUTS" >&2
  settle "$sn_kc" "$sn_api"
  measure "$sn" "$sn_kc" "$sn_api" agent_restart >>"$work/sn-restart.txt"
  echo "[bench] selfnode: power cut $i/$CUTS" >&2
  settle "$sn_kc" "$sn_api"
  measure "$sn" "$sn_kc" "$sn_api" power_cut >>"$work/sn-cut.txt"
done
stop_agent
"$S" --root "$sn" reset --force --bundle "$B" >/dev/null
rm -rf "$sn"

echo "[bench] kubeadm: init" >&2
kubeadm_up "$work/ka-init.txt"
ka_kc=/etc/kubernetes/admin.conf
ka_api='kube-apiserver-.*'
for i in $(seq 1 "$CUTS"); do
  echo "[bench] kubeadm: agent restart $i/$CUTS" >&2
  settle "$ka_kc" "$ka_api"
  measure / "$ka_kc" "$ka_api" agent_restart >>"$work/ka-restart.txt"
  echo "[bench] kubeadm: power cut $i/$CUTS" >&2
  settle "$ka_kc" "$ka_api"
  measure / "$ka_kc" "$ka_api" power_cut >>"$work/ka-cut.txt"
done
kubeadm_down

col() { cut -d' ' -f"$1" "$2" | median; }
out=bench/results/recovery-$(date +%Y-%m-%d).md
{
  echo "# Recovery: selfnode vs kubeadm, agent restart and power cut ($(date -u +%Y-%m-%dT%H:%MZ))"
  echo
  echo "Machine: $(machine). Command: \`bash bench/recovery.sh $CUTS\`."
  echo
  echo "| median of $CUTS, seconds from the agent's start | selfnode | kubeadm | ratio |"
  echo "|---|---|---|---|"
  for kind in restart cut; do
    name=$([ "$kind" = restart ] && echo "agent restart" || echo "power cut")
    for c in 1 2; do
      what=$([ "$c" = 1 ] && echo "/readyz" || echo "control plane Ready")
      a=$(col "$c" "$work/sn-$kind.txt"); b=$(col "$c" "$work/ka-$kind.txt")
      echo "| $name: $what | $a | $b | $(ratio "$a" "$b") |"
    done
  done
  echo
  echo "Every run (readyz control-plane-ready):"
  echo
  for f in sn-restart sn-cut ka-restart ka-cut; do
    echo "    $f: $(tr '\n' ',' <"$work/$f.txt" | sed 's/,$//')"
  done
} >"$out"
cat "$out"
