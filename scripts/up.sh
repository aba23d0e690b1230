#!/usr/bin/env bash
# The main job on a fresh machine: install everything, build selfnode, start
# the host agent (containerd + kubelet) in the background, create a
# self-hosted single-node cluster with 'selfnode init' and show its pods.
# Run as root. Idempotent: running it again reuses everything that is there.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS

bash scripts/install-deps.sh
echo "[up] building selfnode (release, static)" >&2
cargo build --release --quiet -p node
install -m 0755 target/x86_64-unknown-linux-gnu/release/selfnode /usr/local/bin/selfnode

# An agent already running from an older build is restarted onto the new
# one: an agent stop (SIGTERM) leaves every container running, and the new
# agent takes them over.
agent_pid=$( (selfnode status -o json 2>/dev/null || true) | sed -n '/"agent"/,/}/s/.*"pid": \([0-9]*\).*/\1/p' | head -n 1)
if [ -n "$agent_pid" ] && ! cmp -s "/proc/$agent_pid/exe" /usr/local/bin/selfnode; then
  echo "[up] restarting the agent (pid $agent_pid) onto the new build; containers keep running" >&2
  kill -TERM "$agent_pid"
  for _ in $(seq 1 60); do kill -0 "$agent_pid" 2>/dev/null || break; sleep 1; done
fi
if selfnode status -o json 2>/dev/null | grep -q '"running": true'; then
  echo "[up] the agent is already running" >&2
else
  mkdir -p /var/log/selfnode
  echo "[up] starting 'selfnode agent' in the background (log: /var/log/selfnode/agent.log)" >&2
  nohup /usr/local/bin/selfnode agent >>/var/log/selfnode/agent.log 2>&1 </dev/null &
fi

echo "[up] waiting for containerd, the images and the kubelet (timeout 5m)" >&2
for _ in $(seq 1 300); do
  selfnode status >/dev/null 2>&1 && break
  sleep 1
done
# Not every component is ready before init (the API server of a cluster
# coming back, or none yet): status says which, init waits for what it needs.
selfnode status || echo "[up] not every component is ready yet; init waits for what it needs" >&2

echo "[up] selfnode init --allow-workloads (single node: pods may run on it; a repeated init only checks)" >&2
selfnode init --allow-workloads
echo "[up] kubectl get pods -A" >&2
# A cluster coming back hands its API server over from the checkpoint copy
# to the DaemonSet's pod about when init returns: the API may be away for a
# second then, so the listing is tried for up to 30 s.
for i in $(seq 1 30); do
  /var/cache/selfnode/bundle/bin/kubectl --kubeconfig /etc/kubernetes/admin.conf get pods -A -o wide && break
  [ "$i" = 30 ] && exit 1
  sleep 1
done
echo "[up] done in $((SECONDS - start))s; export KUBECONFIG=/etc/kubernetes/admin.conf" >&2
