#!/usr/bin/env bash
# Benchmark: a one-host Kubernetes minor upgrade, `selfnode upgrade apply`
# against `kubeadm upgrade apply` plus the kubelet swap, on this machine,
# from the previous bundle (versions-previous.env) to the current one, the
# same binaries and images on both sides, alternating runs. Root only;
# nothing else may run a cluster on this host meanwhile.
#
#   bash bench/upgrade.sh [RUNS]     # default 3 runs of each
#
# Needs both bundles: fixtures/build-bundle.sh and
# fixtures/build-previous-bundle.sh. Writes bench/results/upgrade-<date>.md
# (medians, ratios, every run).
#
# Measured on both sides from the moment the upgrade command starts:
#   total: until every component runs the new version (the upgrade
#     command returned, and for kubeadm the kubelet swapped and the Node
#     reporting the new kubelet version);
#   API unavailable: seconds in which /readyz through the admin kubeconfig
#     did not answer ok, probed every 0.2 s (from each failed probe to the
#     next one); for selfnode also by step of `upgrade apply`.
# selfnode: a fresh host directory (--root), the agent on the previous
#   bundle, `init --allow-workloads`, then `upgrade apply --bundle <current>`
#   (its images import, snapshot, etcd, the control plane, then the host).
# kubeadm: on the real root, containerd and the kubelet of `selfnode agent`
#   on the previous bundle, `kubeadm init` of the previous version, then the
#   timed part: the current bundle's images imported (selfnode does this
#   inside its upgrade), etcd's image tag in kubeadm-config moved to the new
#   etcd (kubeadm pins the tag init was given), `kubeadm upgrade apply
#   <current> -y` with the current kubeadm, then the kubelet swap: the agent
#   restarted on the current bundle (what `apt install kubelet && systemctl
#   restart kubelet` does on a kubeadm host).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
work=$(mktemp -d /tmp/selfnode-bench.XXXXXX)
. bench/lib.sh
P=${SELFNODE_PREVIOUS_BUNDLE:-/var/cache/selfnode/previous/bundle}
[ -x "$P/bin/kubeadm" ] || { echo "no previous bundle at $P: run fixtures/build-previous-bundle.sh" >&2; exit 1; }
FROM=$(sed -n 's/^KUBERNETES_VERSION=//p' "$P/VERSION")
TO=$(sed -n 's/^KUBERNETES_VERSION=//p' "$B/VERSION")
# kubeadm runs on the real root: a cluster of this host's own (scripts/up.sh's)
# leaves kubeconfigs there that kubeadm takes up and points at the wrong server.
if [ -e /etc/kubernetes/admin.conf ] || [ -e /var/lib/selfnode/checkpoint ]; then
  echo "error: this host has a cluster of its own on / (/etc/kubernetes, /var/lib/selfnode): the kubeadm runs need / to themselves. Stop and forget it first ('selfnode stop && selfnode reset --force'; scripts/up.sh makes it again), then run this again." >&2
  exit 2
fi
prober=""
ka_up=""
# A kubeadm run cut short leaves its manifests and kubelet config on /:
# kubeadm_down removes them on every exit, not only after a good run.
cleanup() { stop_probe >/dev/null; if [ -n "$ka_up" ]; then kubeadm_down; else stop_agent; fi; rm -rf "$work"; }
trap cleanup EXIT

# kubeconfig: probes /readyz every 0.2 s into $work/probe.txt (a line per
# probe: when it started, 1 or 0).
start_probe() {
  : >"$work/probe.txt"
  ( while :; do t=$(now); if readyz "$1"; then echo "$t 1"; else echo "$t 0"; fi; sleep 0.2; done >>"$work/probe.txt" ) &
  prober=$!
}
# Prints the seconds the API did not answer: from each failed probe to the
# next probe (a probe that hangs until its 2 s timeout counts in full).
stop_probe() {
  [ -n "$prober" ] || return 0
  kill "$prober" 2>/dev/null || true; wait "$prober" 2>/dev/null || true; prober=""
  python3 - "$work/probe.txt" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1]) if len(l.split()) == 2]
print('%.1f' % sum(float(b[0]) - float(a[0]) for a, b in zip(rows, rows[1:]) if a[1] == '0'))
PY
}
# Where selfnode's unavailability fell: the seconds of it within each step
# of `upgrade apply` ($1: its -o json report, $2: when the command
# started), as "step=seconds" for the steps with any.
down_by_step() {
  python3 - "$work/probe.txt" "$1" "$2" <<'PY'
import json, sys
rows = [l.split() for l in open(sys.argv[1]) if len(l.split()) == 2]
gaps = [(float(a[0]), float(b[0])) for a, b in zip(rows, rows[1:]) if a[1] == '0']
t0 = float(sys.argv[3])
out = []
for s in json.load(open(sys.argv[2]))['steps']:
    end = t0 + s['finished_at']
    start = end - s['seconds']
    d = sum(max(0.0, min(e, end) - max(b, start)) for b, e in gaps)
    if d >= 0.1:
        out.append('%s=%.1f' % (s['step'], d))
print(' '.join(out) or '-')
PY
}

run_selfnode() {
  local root="$work/sn" t0 t1 down
  rm -rf "$root"; mkdir -p "$root"
  B_SAVED=$B; B=$P; start_agent "$root"; B=$B_SAVED
  "$S" --root "$root" init --bundle "$P" --allow-workloads -o json >/dev/null
  start_probe "$root/etc/kubernetes/admin.conf"
  t0=$(now)
  "$S" --root "$root" upgrade apply --bundle "$B" -o json >"$work/sn-upgrade.json" 2>"$work/sn-upgrade.log" \
    || { tail -30 "$work/sn-upgrade.log" >&2; return 1; }
  t1=$(now)
  down=$(stop_probe)
  down_by_step "$work/sn-upgrade.json" "$t0" >>"$work/sn-steps.txt"
  # The agent re-executed itself in place: the same pid stops it.
  B_SAVED=$B; B=$P; stop_agent; B=$B_SAVED
  umount -R "$root" 2>/dev/null || true
  rm -rf "$root"
  echo "$(secs "$t0" "$t1") $down"
}

run_kubeadm() {
  local t0 t1 down etcd_to
  B_SAVED=$B; B=$P
  ka_up=1
  kubeadm_up "$work/ka-init.txt"
  B=$B_SAVED
  start_probe /etc/kubernetes/admin.conf
  t0=$(now)
  "$S" images import --bundle "$B" >/dev/null
  etcd_to=$(sed -n 's/^ETCD_VERSION=v//p' "$B/VERSION")-0
  "$K" --kubeconfig /etc/kubernetes/admin.conf -n kube-system get configmap kubeadm-config -o yaml \
    | sed "s/imageTag: .*/imageTag: $etcd_to/" \
    | "$K" --kubeconfig /etc/kubernetes/admin.conf apply -f - >/dev/null 2>&1
  "$B/bin/kubeadm" upgrade apply "$TO" -y --ignore-preflight-errors=all >"$work/kubeadm-upgrade.log" 2>&1 \
    || { tail -30 "$work/kubeadm-upgrade.log" >&2; return 1; }
  # The kubelet swap: the agent (and with it the kubelet) on the new bundle;
  # an agent stop keeps the containers running.
  kill -TERM "$agent_pid"; wait "$agent_pid" 2>/dev/null || true
  launch_agent /
  until [ "$("$K" --kubeconfig /etc/kubernetes/admin.conf get nodes -o 'jsonpath={.items[0].status.nodeInfo.kubeletVersion}' 2>/dev/null)" = "$TO" ]; do sleep 0.5; done
  t1=$(now)
  down=$(stop_probe)
  echo "$(secs "$t0" "$t1") $down"
}

: >"$work/sn.txt"; : >"$work/ka.txt"; : >"$work/sn-steps.txt"
for i in $(seq 1 "$RUNS"); do
  echo "[bench] run $i/$RUNS: selfnode upgrade apply $FROM -> $TO" >&2
  run_selfnode >>"$work/sn.txt"
  echo "[bench] selfnode (total, API unavailable): $(tail -n 1 "$work/sn.txt"); unavailable by step: $(tail -n 1 "$work/sn-steps.txt")" >&2
  echo "[bench] run $i/$RUNS: kubeadm upgrade apply $FROM -> $TO + kubelet swap" >&2
  run_kubeadm >>"$work/ka.txt"
  echo "[bench] kubeadm (total, API unavailable): $(tail -n 1 "$work/ka.txt")" >&2
  kubeadm_down
  ka_up=""
done

sn_total=$(cut -d' ' -f1 "$work/sn.txt" | median)
sn_down=$(cut -d' ' -f2 "$work/sn.txt" | median)
ka_total=$(cut -d' ' -f1 "$work/ka.txt" | median)
ka_down=$(cut -d' ' -f2 "$work/ka.txt" | median)
out=bench/results/upgrade-$(date +%Y-%m-%d).md
{
  echo "# selfnode upgrade apply vs kubeadm upgrade apply, $FROM -> $TO ($(date -u +%Y-%m-%dT%H:%MZ))"
  echo
  echo "Machine: $(machine). Command: \`bash bench/upgrade.sh $RUNS\`."
  echo
  echo "| median of $RUNS runs | selfnode | kubeadm | ratio selfnode / kubeadm |"
  echo "|---|---|---|---|"
  echo "| total: upgrade command to every component at $TO (s) | $sn_total | $ka_total | $(ratio "$sn_total" "$ka_total") |"
  echo "| API unavailable: /readyz not ok, from each failed probe (every 0.2 s, 2 s timeout) to the next (s) | $sn_down | $ka_down | $(python3 -c "import sys; a,b=map(float,sys.argv[1:]); print('%.2f' % (a/b) if b else 'n/a (kubeadm 0)')" "$sn_down" "$ka_down") |"
  echo
  echo "Every run (total, API unavailable; selfnode | kubeadm):"
  echo
  paste -d'|' "$work/sn.txt" "$work/ka.txt" | sed 's/^/    /'
  echo
  echo "Where selfnode's API unavailability fell, by step of \`upgrade apply\` (seconds, every run):"
  echo
  sed 's/^/    /' "$work/sn-steps.txt"
} >"$out"
cat "$out"
