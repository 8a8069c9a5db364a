#!/usr/bin/env bash
# `make kind-down`: removes what `make kind` made: the kind cluster ferrolb, the client
# container and the `kind` network (only those carrying our labels), the engine when
# engine.sh started it (the state file says so; `engine.sh stop` checks and restores the
# host's firewall), and the state directory. Idempotent; touches nothing it did not make.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

engine_ours=false
[ -f "$state_file" ] && engine_ours=$(jq -r '.engine_started_by_us // false' "$state_file" 2>/dev/null || echo false)

if docker version >/dev/null 2>&1; then
  kind=$(kind_bin)
  if [ -x "$kind" ]; then
    if "$kind" get clusters 2>/dev/null | grep -qx "$cluster"; then
      "$kind" delete cluster --name "$cluster" --kubeconfig "$kind_dir/kubeconfig"
    fi
  else
    # No kind binary (a cache wiped by hand): its node containers carry kind's label.
    node_containers | xargs -r docker rm -f -v >/dev/null
  fi
  if docker inspect -f "{{index .Config.Labels \"$label\"}}" "$client" 2>/dev/null | grep -qx client; then
    docker rm -f "$client" >/dev/null
    say "removed $client"
  fi
  if docker network inspect -f "{{index .Labels \"$label\"}}" "$network" 2>/dev/null | grep -qx network; then
    left=$(docker network inspect -f '{{range .Containers}}{{.Name}} {{end}}' "$network")
    if [ -n "${left// /}" ]; then
      say "keeping the $network network: containers that are not ours are on it ($left)"
    else
      docker network rm "$network" >/dev/null
      say "removed the $network network"
    fi
  fi
else
  say "no engine answers: no cluster, client or network to remove"
fi

if [ "$engine_ours" = true ]; then
  bash "$kind_here/engine.sh" stop
fi
rm -rf "$kind_dir"
say "kind-down: done"
