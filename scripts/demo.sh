#!/usr/bin/env bash
# Builds shoal, starts the control plane, applies the sample manifests and
# stays in the foreground (Ctrl-C stops the server). Data lives in
# ${SHOAL_DATA_DIR:-./shoal-data}; the API listens on ${SHOAL_LISTEN:-127.0.0.1:6443}.
set -euo pipefail
cd "$(dirname "$0")/.."
data=${SHOAL_DATA_DIR:-./shoal-data}
listen=${SHOAL_LISTEN:-127.0.0.1:6443}
cargo build --release --bin shoal
mkdir -p "$data"
target/release/shoal server --data-dir "$data" --listen "$listen" > "$data/stdout" &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT INT TERM
for _ in $(seq 1 300); do
  grep -q '^export KUBECONFIG=' "$data/stdout" 2>/dev/null && break
  kill -0 $server 2>/dev/null || { echo "shoal server exited; see the log above" >&2; exit 1; }
  sleep 0.1
done
export KUBECONFIG=$(cd "$data" && pwd)/kubeconfig.yaml
kubectl apply -f samples/manifests/demo.yaml
cat <<MSG

Shoal is running at https://$listen. In another shell:
  export KUBECONFIG=$KUBECONFIG
  kubectl get all -n demo
  kubectl scale deployment hello -n demo --replicas=50
  kubectl get deployment hello -n demo -o yaml
  kubectl get pods -n demo -w
(The node agent that runs these pods and the controllers that make a Deployment's
pods are the next pieces of work: today objects are stored, validated, watched and,
once Nodes register, scheduled.)
Ctrl-C stops the server.
MSG
wait $server
