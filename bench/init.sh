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
B=/var/cache/selfnode/bundle
K="$B/bin/kubectl"
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
[ -x "$B/bin/kubeadm" ] || { echo "no bundle at $B: run fixtures/build-bundle.sh" >&2; exit 1; }
cargo build --release --quiet -p node
S=$PWD/target/x86_64-unknown-linux-gnu/release/selfnode
ADDR=$(ip -4 -o route get 1.1.1.1 2>/dev/null | sed -n 's/.* src \([0-9.]*\).*/\1/p')
[ -n "$ADDR" ] || ADDR=$(ip -4 -o addr show scope global | awk '{print $4}' | cut -d/ -f1 | head -1)
work=$(mktemp -d /tmp/selfnode-bench.XXXXXX)
agent_pid=""

stop_agent() { # a node stop: the agent and every container
  [ -n "$agent_pid" ] || return 0
  "$S" stop --bundle "$B" >/dev/null 2>&1 || kill -TERM "$agent_pid" 2>/dev/null || true
  for _ in $(seq 1 120); do kill -0 "$agent_pid" 2>/dev/null || break; sleep 0.5; done
  kill -KILL "$agent_pid" 2>/dev/null || true
  wait "$agent_pid" 2>/dev/null || true
  agent_pid=""
}
cleanup() { stop_agent; rm -rf "$work"; }
trap cleanup EXIT

start_agent() { # root
  "$S" --root "$1" agent --bundle "$B" >"$work/agent.log" 2>&1 &
  agent_pid=$!
  for _ in $(seq 1 300); do "$S" --root "$1" status >/dev/null 2>&1 && return 0; sleep 0.5; done
  echo "agent did not become healthy" >&2; tail -20 "$work/agent.log" >&2; return 1
}

cp_ready() { # kubeconfig: 0 when apiserver, controller-manager and scheduler pods are all Ready
  local out
  out=$("$K" --kubeconfig "$1" -n kube-system get pods -o 'jsonpath={range .items[*]}{.metadata.name} {.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' 2>/dev/null) || return 1
  for c in kube-apiserver kube-controller-manager kube-scheduler; do
    echo "$out" | grep -q "^$c.* True$" || return 1
  done
}

now() { date +%s.%N; }
secs() { python3 -c "import sys; print('%.1f' % (float(sys.argv[2]) - float(sys.argv[1])))" "$1" "$2"; }

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

run_kubeadm() {
  cat >"$work/kubeadm.yaml" <<YAML
apiVersion: kubeadm.k8s.io/v1beta4
kind: InitConfiguration
localAPIEndpoint: {advertiseAddress: $ADDR}
nodeRegistration:
  criSocket: unix:///run/selfnode/containerd/containerd.sock
  ignorePreflightErrors: [all]
---
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
kubernetesVersion: $(sed -n 's/^KUBERNETES_VERSION=//p' "$B/VERSION")
etcd: {local: {imageTag: $(sed -n 's/^ETCD_VERSION=v//p' "$B/VERSION")-0}}
networking: {podSubnet: 10.244.0.0/16}
---
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
YAML
  start_agent /
  # kubeadm asks systemd to restart the kubelet; there is none here, so the
  # agent restarts it (SIGHUP) as soon as kubeadm has written kubelet.conf.
  ( for _ in $(seq 1 600); do [ -f /etc/kubernetes/kubelet.conf ] && { kill -HUP "$agent_pid"; exit 0; }; sleep 0.2; done ) &
  local hup=$! t0 t1 t2
  t0=$(now)
  "$B/bin/kubeadm" init --config "$work/kubeadm.yaml" >"$work/kubeadm.log" 2>&1 || { tail -30 "$work/kubeadm.log" >&2; return 1; }
  t1=$(now)
  until cp_ready /etc/kubernetes/admin.conf; do sleep 0.5; done
  t2=$(now)
  wait "$hup" 2>/dev/null || true
  "$B/bin/kubeadm" reset -f --cri-socket unix:///run/selfnode/containerd/containerd.sock >"$work/kubeadm-reset.log" 2>&1 || true
  stop_agent
  "$S" reset --force >/dev/null
  rm -rf /etc/kubernetes /var/lib/etcd /var/lib/kubelet
  echo "$(secs "$t0" "$t1") $(secs "$t0" "$t2")"
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

: >"$work/sn.txt"; : >"$work/ka.txt"
for i in $(seq 1 "$RUNS"); do
  echo "[bench] run $i/$RUNS: selfnode init" >&2
  run_selfnode >>"$work/sn.txt"
  echo "[bench] run $i/$RUNS: kubeadm init" >&2
  run_kubeadm >>"$work/ka.txt"
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
  echo "Machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -r), cgroup $( [ -f /sys/fs/cgroup/cgroup.controllers ] && echo v2 || echo v1 ); bundle $(sed -n 's/^KUBERNETES_VERSION=//p' "$B/VERSION"). Command: \`bash bench/init.sh $RUNS\`."
  echo
  echo "| median of $RUNS runs | seconds |"
  echo "|---|---|"
  echo "| selfnode: control plane Ready (self-hosted pods Ready, /readyz ok) | $sn_pivot |"
  echo "| kubeadm: control plane Ready (static pods Ready) | $ka_ready |"
  echo "| ratio selfnode / kubeadm (control plane Ready) | $(python3 -c "import sys; print('%.2f' % (float(sys.argv[1]) / float(sys.argv[2])))" "$sn_pivot" "$ka_ready") |"
  echo "| selfnode init returns (pivoted, temporary plane gone, node + kube-proxy + CoreDNS Ready) | $sn_total |"
  echo "| kubeadm init returns | $ka_exit |"
  echo "| floor: etcd + kube-apiserver from start to /readyz (selfnode's temporary plane) | $sn_floor |"
  echo
  echo "Every run (selfnode: total pivot floor; kubeadm: exit control-plane-ready):"
  echo
  paste -d'|' "$work/sn.txt" "$work/ka.txt" | sed 's/^/    /'
} >"$out"
cat "$out"
