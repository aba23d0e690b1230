#!/usr/bin/env bash
# Benchmark: `selfnode join` against `kubeadm join`, each until the new Node
# is Ready, on the same two hosts of this machine, alternating clusters.
# Root only; nothing else may run a cluster on this machine meanwhile.
#
#   bash bench/join.sh [RUNS]        # default 3 joins of each
#
# Writes bench/results/join-<date>.md (medians, ratio, every run).
#
# The hosts (as node/tests/support makes them):
# - the first host on the real root, advertising 198.18.0.1 on a bridge;
# - the joining host in its own network namespace (198.18.0.2 on the same
#   bridge) and mount namespace, where /etc/kubernetes, /var/lib/kubelet,
#   /var/lib/selfnode, /run/selfnode, /var/log/selfnode and /etc/cni/net.d
#   are its own directories; its containerd and kubelet are those of
#   `selfnode agent --cgroup-root /selfnode-bench` (same binaries, same
#   images, same configs for both clusters), started and healthy before the
#   clock starts. Between runs the joining host is stopped, reset and wiped
#   and its Node deleted; the first host's cluster stays.
# selfnode: `selfnode init --allow-workloads` on the first host once, then
#   per run the time of `selfnode join STRING` until it returns (it ends
#   when the Node is Ready: the pod network's DaemonSet pod runs on it).
# kubeadm: `kubeadm init` on the first host once (bench/lib.sh), then per
#   run the time of `kubeadm join` (from `kubeadm token create
#   --print-join-command`) until it returns, and until the Node is Ready.
#   kubeadm installs no pod network: the joining host gets a bridge CNI
#   config before the run, which favours kubeadm (selfnode's time includes
#   its network pod starting). kubeadm asks systemd to restart the kubelet;
#   there is none, so the agent restarts it (SIGHUP) as soon as kubeadm has
#   written the bootstrap kubeconfig, and the node's name and address come
#   from the agent's node.json (kubeadm would put them in kubeadm-flags.env).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
work=$(mktemp -d /tmp/selfnode-bench.XXXXXX)
. bench/lib.sh
ADDR=198.18.0.1
JOIN_IP=198.18.0.2
BR=snbbench NS=snhbench VETH=snvbench
MNT=/run/selfnode-bench-mntns
J=$work/joiner
JDIRS="/etc/kubernetes /var/lib/kubelet /var/lib/selfnode /run/selfnode /var/log/selfnode /etc/cni/net.d"
CRI=unix:///run/selfnode/containerd/containerd.sock
jagent_pid=""
first=""

jrun() { nsenter --net=/run/netns/$NS --mount=$MNT/ns -- "$@"; }

lan_up() {
  ip link add $BR type bridge
  ip addr add $ADDR/24 dev $BR
  ip link set $BR up
  ip netns add $NS
  ip link add $VETH type veth peer name ${VETH}p
  ip link set $VETH master $BR
  ip link set $VETH up
  ip link set ${VETH}p netns $NS
  ip netns exec $NS ip link set lo up
  ip netns exec $NS ip addr add $JOIN_IP/24 dev ${VETH}p
  ip netns exec $NS ip link set ${VETH}p up
  ip netns exec $NS ip route add default via $ADDR
}

# The joining host's mount namespace, bound to a file (which needs a private
# mount). Made anew before each run: a directory the first host's reset
# deletes on the real root takes the joining host's bind mount on it along.
mnt_up() {
  mkdir -p $MNT
  grep -q " $MNT " /proc/self/mountinfo || { mount --bind $MNT $MNT; mount --make-private $MNT; }
  umount -l $MNT/ns 2>/dev/null || true
  : >$MNT/ns
  local binds=""
  for d in $JDIRS; do
    mkdir -p "$d" "$J$d"
    binds="$binds mount --bind $J$d $d;"
  done
  unshare --mount=$MNT/ns --propagation private -- sh -c "$binds"
}

lan_down() {
  umount -l $MNT/ns 2>/dev/null || true
  rm -f $MNT/ns
  umount $MNT 2>/dev/null && rmdir $MNT 2>/dev/null || true
  ip link del $VETH 2>/dev/null || true
  ip netns del $NS 2>/dev/null || true
  ip link del $BR 2>/dev/null || true
  for h in /sys/fs/cgroup/*/selfnode-bench; do
    [ -d "$h" ] && find "$h" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
}

joiner_start() {
  mnt_up
  # nsenter itself (not jrun, a function: its subshell would be $!) execs
  # the agent, so $! is the agent's PID (kubeadm's run signals it).
  nsenter --net=/run/netns/$NS --mount=$MNT/ns -- \
    "$S" --root / agent --bundle "$B" --cgroup-root /selfnode-bench >>"$work/joiner-agent.log" 2>&1 &
  jagent_pid=$!
  for _ in $(seq 1 300); do jrun "$S" --root / status >/dev/null 2>&1 && return 0; sleep 0.5; done
  echo "the joining host's agent did not become healthy" >&2; tail -20 "$work/joiner-agent.log" >&2; return 1
}

# Stops the joining host, forgets its cluster and wipes its directories;
# deletes its Node from the first host's cluster.
joiner_reset() {
  if [ -n "$jagent_pid" ]; then
    jrun "$S" --root / stop --bundle "$B" >/dev/null 2>&1 || kill -TERM "$jagent_pid" 2>/dev/null || true
    for _ in $(seq 1 120); do kill -0 "$jagent_pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$jagent_pid" 2>/dev/null || true
    wait "$jagent_pid" 2>/dev/null || true
    jagent_pid=""
  fi
  [ -f $MNT/ns ] && jrun "$S" --root / reset --force --bundle "$B" >>"$work/joiner-reset.log" 2>&1 || true
  for d in $JDIRS; do find "$J$d" -mindepth 1 -delete 2>/dev/null || true; done
  if [ -f /etc/kubernetes/admin.conf ]; then
    "$K" --kubeconfig /etc/kubernetes/admin.conf delete node bench-node --ignore-not-found --wait=true >/dev/null 2>&1 || true
    for _ in $(seq 1 60); do
      "$K" --kubeconfig /etc/kubernetes/admin.conf get node bench-node >/dev/null 2>&1 || return 0
      sleep 0.5
    done
    echo "Node bench-node is still there after the joining host's reset" >&2; return 1
  fi
}

# since (UTC, RFC 3339 seconds): the Node is Ready and was made at or after
# `since` (never an earlier run's Node whose status is stale).
node_ready() {
  local out
  out=$("$K" --kubeconfig /etc/kubernetes/admin.conf get node bench-node -o 'jsonpath={.metadata.creationTimestamp} {.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null) || return 1
  [ "${out#* }" = True ] && [[ ! "${out%% *}" < "$1" ]]
}

utc() { date -u +%Y-%m-%dT%H:%M:%SZ; }

cleanup() {
  set +e
  joiner_reset
  case "$first" in
    selfnode) stop_agent; "$S" reset --force --bundle "$B" >/dev/null 2>&1 || true ;;
    kubeadm) kubeadm_down ;;
  esac
  lan_down
  rm -rf "$work"
}
trap cleanup EXIT

lan_up
: >"$work/sn.txt"; : >"$work/ka.txt"

echo "[bench] selfnode: init on the first host" >&2
first=selfnode
start_agent /
join=$("$S" init --bundle "$B" --allow-workloads --advertise-address $ADDR -o json |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["join_string"])')
for i in $(seq 1 "$RUNS"); do
  echo "[bench] run $i/$RUNS: selfnode join" >&2
  joiner_start
  since=$(utc)
  t0=$(now)
  jrun "$S" --root / join "$join" --node-name bench-node -o json >"$work/join.json"
  t1=$(now)
  node_ready "$since" || { echo "selfnode join returned but the Node is not Ready" >&2; exit 1; }
  echo "$(secs "$t0" "$t1")" >>"$work/sn.txt"
  joiner_reset
done
stop_agent
"$S" reset --force --bundle "$B" >/dev/null
first=""

echo "[bench] kubeadm: init on the first host" >&2
first=kubeadm
kubeadm_up "$work/ka-init.txt"
for i in $(seq 1 "$RUNS"); do
  echo "[bench] run $i/$RUNS: kubeadm join" >&2
  mkdir -p "$J/var/lib/selfnode" "$J/etc/cni/net.d"
  cat >"$J/var/lib/selfnode/node.json" <<JSON
{"node_name": "bench-node", "node_ip": "$JOIN_IP", "cluster_dns": "10.96.0.10", "cluster_domain": "cluster.local"}
JSON
  cat >"$J/etc/cni/net.d/10-bench.conflist" <<JSON
{"cniVersion": "1.0.0", "name": "bench", "plugins": [
  {"type": "bridge", "bridge": "benchbr0", "isGateway": true, "ipMasq": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.200.0/24"}]]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
JSON
  joiner_start
  cmd=$("$B/bin/kubeadm" token create --print-join-command --kubeconfig /etc/kubernetes/admin.conf)
  ( for _ in $(seq 1 1200); do [ -f "$J/etc/kubernetes/bootstrap-kubelet.conf" ] && { kill -HUP "$jagent_pid"; exit 0; }; sleep 0.1; done ) &
  hup=$!
  since=$(utc)
  t0=$(now)
  # shellcheck disable=SC2086
  # No preflight: its checks cost kubeadm a hostname lookup that times out
  # in the namespace (no resolver there) and find no kubelet on the PATH.
  jrun "$B/bin/kubeadm" ${cmd#kubeadm } --node-name bench-node --cri-socket $CRI \
    --skip-phases=preflight >"$work/kubeadm-join.log" 2>&1 || { tail -30 "$work/kubeadm-join.log" >&2; exit 1; }
  t1=$(now)
  until node_ready "$since"; do sleep 0.2; done
  t2=$(now)
  wait "$hup" 2>/dev/null || true
  echo "$(secs "$t0" "$t1") $(secs "$t0" "$t2")" >>"$work/ka.txt"
  jrun "$B/bin/kubeadm" reset -f --cri-socket $CRI >>"$work/kubeadm-reset.log" 2>&1 || true
  joiner_reset
done
kubeadm_down
first=""

sn=$(median <"$work/sn.txt")
ka_exit=$(cut -d' ' -f1 "$work/ka.txt" | median)
ka_ready=$(cut -d' ' -f2 "$work/ka.txt" | median)
out=bench/results/join-$(date -u +%Y-%m-%d).md
{
  echo "# selfnode join vs kubeadm join ($(date -u +%Y-%m-%dT%H:%MZ))"
  echo
  echo "Machine: $(machine). Command: \`bash bench/join.sh $RUNS\` ($RUNS joins of each, the joining host in its own network and mount namespaces; see the script's header)."
  echo
  echo "| median of $RUNS (s) | |"
  echo "|---|---|"
  echo "| selfnode join until it returns (Node Ready) | $sn |"
  echo "| kubeadm join until it returns | $ka_exit |"
  echo "| kubeadm join until the Node is Ready (CNI config given beforehand) | $ka_ready |"
  echo "| ratio selfnode / kubeadm (Node Ready) | $(ratio "$sn" "$ka_ready") |"
  echo
  echo "Every run (selfnode: join; kubeadm: join-returns node-ready):"
  echo
  echo '```'
  paste -d'|' "$work/sn.txt" "$work/ka.txt"
  echo '```'
} >"$out"
cat "$out"
