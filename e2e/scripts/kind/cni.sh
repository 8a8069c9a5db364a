#!/usr/bin/env bash
# Pod networking for the kind cluster (which runs without kind's default CNI): on every
# node, a CNI config (bridge + host-local, or ptp where the node image has no bridge
# plugin) from the Node's spec.podCIDRs, forwarding on, and a route to each other node's
# pod CIDRs via that node's address on the kind network (both families). Then waits until
# every Node is Ready. Idempotent: node.sh runs it again after heal and start, when a
# node's routes are gone.
#
# Usage: cni.sh [--no-wait]   (--no-wait: set up what can be, do not wait for Ready)
set -euo pipefail
. "$(dirname "$0")/lib.sh"
wait_ready=1
[ "${1:-}" = --no-wait ] && wait_ready=""

# Every Node with its pod CIDRs and InternalIPs, once kube-controller-manager gave them.
nodes_json=""
for _ in $(seq 1 120); do
  nodes_json=$(kc get nodes -o json 2>/dev/null) &&
    [ "$(jq '[.items[] | select((.spec.podCIDRs // []) | length == 0)] | length' <<< "$nodes_json")" = 0 ] &&
    [ "$(jq '.items | length' <<< "$nodes_json")" -ge "$(node_containers | wc -l)" ] && break
  nodes_json=""
  sleep 1
done
[ -n "$nodes_json" ] || fail "the Nodes got no pod CIDRs within 120 s (kubectl get nodes -o yaml)"

# name podCIDR... ; name ip...
mapfile -t cidr_lines < <(jq -r '.items[] | [.metadata.name] + .spec.podCIDRs | join(" ")' <<< "$nodes_json")
mapfile -t ip_lines < <(jq -r '.items[] | [.metadata.name] + [.status.addresses[] | select(.type == "InternalIP") | .address] | join(" ")' <<< "$nodes_json")

ips_of() { local l; for l in "${ip_lines[@]}"; do if [ "${l%% *}" = "$1" ]; then echo "${l#* }"; fi; done; }

on_network() {
  [ "$(docker inspect -f '{{.State.Running}}' "$1" 2>/dev/null)" = true ] &&
    [ "$(docker inspect -f "{{if index .NetworkSettings.Networks \"$network\"}}yes{{end}}" "$1")" = yes ]
}

for line in "${cidr_lines[@]}"; do
  read -r node cidrs <<< "$line"
  if ! on_network "$node"; then
    say "skipping $node: not running or not on the $network network"
    continue
  fi
  plugin=bridge
  docker exec "$node" test -x /opt/cni/bin/bridge || plugin=ptp
  # shellcheck disable=SC2086
  conf=$(jq -n --arg plugin "$plugin" --args '$ARGS.positional as $c | {
    cniVersion: "1.0.0", name: "ferrolb-kind",
    plugins: [
      ({type: $plugin, ipMasq: false,
        ipam: {type: "host-local", ranges: [$c[] | [{subnet: .}]],
               routes: [$c[] | if test(":") then {dst: "::/0"} else {dst: "0.0.0.0/0"} end]}}
       + if $plugin == "bridge" then {bridge: "cni0", isGateway: true, hairpinMode: true} else {} end),
      {type: "portmap", capabilities: {portMappings: true}}
    ]}' $cidrs)
  # Written to a temporary name first: containerd watches the directory.
  docker exec -i "$node" sh -c 'mkdir -p /etc/cni/net.d && cat > /etc/cni/net.d/.10-ferrolb.tmp && mv /etc/cni/net.d/.10-ferrolb.tmp /etc/cni/net.d/10-ferrolb.conflist' <<< "$conf"
  routes=("sysctl -qw net.ipv4.ip_forward=1" "sysctl -qw net.ipv6.conf.all.forwarding=1")
  for other in "${cidr_lines[@]}"; do
    read -r peer peer_cidrs <<< "$other"
    [ "$peer" = "$node" ] && continue
    peer_ips=$(ips_of "$peer")
    for c in $peer_cidrs; do
      for ip in $peer_ips; do
        if [[ $c == *:* ]]; then
          if [[ $ip == *:* ]]; then routes+=("ip -6 route replace $c via $ip"); fi
        elif [[ $ip != *:* ]]; then
          routes+=("ip route replace $c via $ip")
        fi
      done
    done
  done
  printf '%s\n' "${routes[@]}" | docker exec -i "$node" sh -e ||
    fail "could not set up forwarding and pod routes on $node"
done

[ -z "$wait_ready" ] || kc wait --for=condition=Ready nodes --all --timeout=180s >/dev/null ||
  fail "not every Node became Ready within 180 s (kubectl get nodes; journalctl -u kubelet in the node)"
