#!/usr/bin/env bash
# The kind state files (this script is their only writer):
#   $FERROLB_KIND_DIR/cluster.json    the contract's state, read by the e2e provider
#   $FERROLB_KIND_DIR/endpoints.json  every container's addresses and MAC on the kind
#                                     network as docker gave them (both families, whatever
#                                     the cluster uses), so node.sh can give them back
#
# Usage: state.sh write FAMILY PROXY_MODE NODE_IMAGE ENGINE_OURS POOL_JSON CONTROLLER SPEAKER ECHO
#        state.sh endpoints     (refresh endpoints.json from the running containers)
set -euo pipefail
. "$(dirname "$0")/lib.sh"

endpoints_file=$kind_dir/endpoints.json

# Records the addresses of every container of ours that is on the network now; entries of
# containers that are cut or stopped are kept as they were.
refresh_endpoints() {
  local old='{}' c ep
  [ -f "$endpoints_file" ] && old=$(cat "$endpoints_file")
  for c in $(node_containers) $client; do
    ep=$(docker inspect -f "{{json (index .NetworkSettings.Networks \"$network\")}}" "$c" 2>/dev/null || echo null)
    [ "$ep" = null ] || [ -z "$ep" ] && continue
    ep=$(jq -c 'def nz: if . == "" then null else . end; {ipv4: (.IPAddress | nz), ipv6: (.GlobalIPv6Address | nz), mac: .MacAddress}' <<< "$ep")
    [ "$(jq -r .ipv4 <<< "$ep")" = null ] && continue
    old=$(jq -c --arg c "$c" --argjson ep "$ep" '.[$c] = $ep' <<< "$old")
  done
  printf '%s\n' "$old" > "$endpoints_file.tmp" && mv "$endpoints_file.tmp" "$endpoints_file"
}

write() {
  local family=$1 proxy_mode=$2 node_image=$3 engine_ours=$4 pool=$5
  local controller=$6 speaker=$7 echo=$8
  refresh_endpoints
  local nodes_json
  nodes_json=$(kc get nodes -o json)
  jq -n \
    --arg name "$cluster" --arg kubeconfig "$kind_dir/kubeconfig" \
    --arg family "$family" --arg proxy "$proxy_mode" --arg network "$network" \
    --arg image "$node_image" --argjson engine "$engine_ours" \
    --argjson pool "$pool" --arg controller "$controller" --arg speaker "$speaker" --arg echo "$echo" \
    --arg client "$client" --arg cp "$cluster-control-plane" \
    --argjson ep "$(cat "$endpoints_file")" --argjson nodes "$nodes_json" \
    '
    def v4: if $family == "ipv6" then null else . end;
    def v6: if $family == "ipv4" then null else . end;
    def machine($c): {name: $c, container: $c, iface: "eth0",
                      ipv4: ($ep[$c].ipv4 | v4), ipv6: ($ep[$c].ipv6 | v6)};
    ($nodes.items | map({key: .metadata.name, value: (.spec.podCIDRs // [])}) | from_entries) as $cidrs |
    {
      name: $name, kubeconfig: $kubeconfig, ip_family: $family, proxy_mode: $proxy,
      network: $network, node_image: $image, engine_started_by_us: $engine,
      control_plane: machine($cp),
      nodes: [$ep | keys[] | select(startswith($name + "-worker"))] | sort
             | map(machine(.) + {mac: $ep[.].mac, pod_cidrs: $cidrs[.]}),
      client: (machine($client) | del(.name)),
      pool: $pool,
      images: {controller: $controller, speaker: $speaker, echo: $echo},
      release: "ferrolb", namespace: "ferrolb-system"
    }' > "$state_file.tmp"
  mv "$state_file.tmp" "$state_file"
}

case "${1:-}" in
  write) shift; write "$@" ;;
  endpoints) refresh_endpoints ;;
  *) echo "usage: $0 write ...|endpoints" >&2; exit 2 ;;
esac
