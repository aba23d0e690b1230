# Shared by the benchmarks (sourced): the bundle, the release binary, the
# agent's start and node stop, control-plane readiness, timing helpers.
# The caller sets `work` (a scratch directory) before calling these.
B=/var/cache/selfnode/bundle
K="$B/bin/kubectl"
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
[ -x "$B/bin/kubeadm" ] || { echo "no bundle at $B: run fixtures/build-bundle.sh" >&2; exit 1; }
cargo build --release --quiet -p node
S=$PWD/target/x86_64-unknown-linux-gnu/release/selfnode
ADDR=$(ip -4 -o route get 1.1.1.1 2>/dev/null | sed -n 's/.* src \([0-9.]*\).*/\1/p')
[ -n "$ADDR" ] || ADDR=$(ip -4 -o addr show scope global | awk '{print $4}' | cut -d/ -f1 | head -1)
agent_pid=""
agent_root=/

launch_agent() { # root: starts the agent in the background, returns at once
  agent_root=$1
  "$S" --root "$1" agent --bundle "$B" >>"$work/agent.log" 2>&1 &
  agent_pid=$!
}

start_agent() { # root: starts the agent, returns once every component is healthy
  launch_agent "$1"
  for _ in $(seq 1 300); do "$S" --root "$1" status >/dev/null 2>&1 && return 0; sleep 0.5; done
  echo "agent did not become healthy" >&2; tail -20 "$work/agent.log" >&2; return 1
}

stop_agent() { # a node stop: the agent and every container
  [ -n "$agent_pid" ] || return 0
  "$S" --root "$agent_root" stop --bundle "$B" >/dev/null 2>&1 || kill -TERM "$agent_pid" 2>/dev/null || true
  for _ in $(seq 1 120); do kill -0 "$agent_pid" 2>/dev/null || break; sleep 0.5; done
  kill -KILL "$agent_pid" 2>/dev/null || true
  wait "$agent_pid" 2>/dev/null || true
  agent_pid=""
}

# kubeconfig [apiserver pod name pattern] [since, UTC RFC 3339]: 0 when the
# apiserver, controller-manager and scheduler pods are all Ready, with
# containers started at or after `since` when given (after a power cut the
# API first serves the Ready status stored before it).
cp_ready() {
  local out api=${2:-kube-apiserver.*} since=${3:-}
  out=$("$K" --kubeconfig "$1" -n kube-system get pods -o 'jsonpath={range .items[*]}{.metadata.name} {.status.conditions[?(@.type=="Ready")].status} {.status.containerStatuses[0].state.running.startedAt}{"\n"}{end}' 2>/dev/null) || return 1
  for c in "$api" 'kube-controller-manager.*' 'kube-scheduler.*'; do
    echo "$out" | grep -E "^$c True " | awk -v s="$since" '$3 >= s {ok=1} END {exit !ok}' || return 1
  done
}

readyz() { "$K" --kubeconfig "$1" --request-timeout=2s get --raw /readyz >/dev/null 2>&1; }

now() { date +%s.%N; }
secs() { python3 -c "import sys; print('%.1f' % (float(sys.argv[2]) - float(sys.argv[1])))" "$1" "$2"; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
ratio() { python3 -c "import sys; print('%.2f' % (float(sys.argv[1]) / float(sys.argv[2])))" "$1" "$2"; }
machine() {
  echo "$(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -r), cgroup $( [ -f /sys/fs/cgroup/cgroup.controllers ] && echo v2 || echo v1 ); bundle $(sed -n 's/^KUBERNETES_VERSION=//p' "$B/VERSION")"
}

# kubeadm's config for this host: containerd and the kubelet of `selfnode agent`.
kubeadm_config() { # file
  cat >"$1" <<YAML
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
}

# kubeadm init on the real root with the agent started; kubeadm asks systemd
# to restart the kubelet, there is none here, so the agent restarts it
# (SIGHUP) as soon as kubeadm has written kubelet.conf. Writes
# "<init returned> <control plane Ready>" in seconds to FILE (not stdout:
# the agent's PID must stay in this shell).
kubeadm_up() { # file
  local times=$1
  kubeadm_config "$work/kubeadm.yaml"
  start_agent /
  ( for _ in $(seq 1 600); do [ -f /etc/kubernetes/kubelet.conf ] && { kill -HUP "$agent_pid"; exit 0; }; sleep 0.2; done ) &
  local hup=$! t0 t1 t2
  t0=$(now)
  "$B/bin/kubeadm" init --config "$work/kubeadm.yaml" >"$work/kubeadm.log" 2>&1 || { tail -30 "$work/kubeadm.log" >&2; return 1; }
  t1=$(now)
  until cp_ready /etc/kubernetes/admin.conf; do sleep 0.5; done
  t2=$(now)
  wait "$hup" 2>/dev/null || true
  echo "$(secs "$t0" "$t1") $(secs "$t0" "$t2")" >>"$times"
}

kubeadm_down() {
  "$B/bin/kubeadm" reset -f --cri-socket unix:///run/selfnode/containerd/containerd.sock >"$work/kubeadm-reset.log" 2>&1 || true
  stop_agent
  "$S" reset --force --bundle "$B" >/dev/null
  rm -rf /etc/kubernetes /var/lib/etcd /var/lib/kubelet
}
