#!/usr/bin/env bash
# Node faults on the kind cluster, for the end-to-end suite and by hand:
#   node.sh NODE cut     disconnect the node from the kind network (link and addresses go)
#   node.sh NODE heal    reconnect it with the same IPv4/IPv6 addresses (so the same MAC),
#                        put back its forwarding and pod routes; wait until it is Ready
#   node.sh NODE stop    kill the node container (SIGKILL: a crash)
#   node.sh NODE start   start it again with the same addresses, repair routes and CNI,
#                        wait until its kubelet reports the Node Ready again
# Each returns when done, non-zero with a message when it fails. The addresses come from
# endpoints.json (state.sh), recorded while the node was on the network: docker would
# otherwise hand a restarted or reconnected container whatever address is free, and the
# kubelet's --node-ip and the other nodes' pod routes would point at the old one.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

node=${1:-}; action=${2:-}
[ -n "$node" ] && [ -n "$action" ] || { echo "usage: $0 NODE cut|heal|stop|start" >&2; exit 2; }
[ -f "$state_file" ] || fail "no $state_file; run make kind"
docker inspect "$node" >/dev/null 2>&1 || fail "no container $node"
docker inspect -f '{{index .Config.Labels "io.x-k8s.kind.cluster"}}' "$node" | grep -qx "$cluster" ||
  fail "$node is not a node of kind cluster $cluster"
endpoints_file=$kind_dir/endpoints.json

connected() { [ "$(docker inspect -f "{{if index .NetworkSettings.Networks \"$network\"}}yes{{end}}" "$node")" = yes ]; }
running() { [ "$(docker inspect -f '{{.State.Running}}' "$node")" = true ]; }

# Addresses while still connected: record them first, whatever happens next.
if connected && running; then bash "$kind_here/state.sh" endpoints; fi
ipv4=$(jq -r --arg n "$node" '.[$n].ipv4 // empty' "$endpoints_file")
ipv6=$(jq -r --arg n "$node" '.[$n].ipv6 // empty' "$endpoints_file")
[ -n "$ipv4" ] || fail "no recorded address for $node in $endpoints_file"

# (Re)connects the node with its recorded addresses (allowed while it is stopped too).
reconnect() {
  local args=(--ip "$ipv4")
  [ -n "$ipv6" ] && args+=(--ip6 "$ipv6")
  if connected; then
    local now
    now=$(docker inspect -f "{{(index .NetworkSettings.Networks \"$network\").IPAMConfig}}" "$node")
    # Already pinned to its addresses (a start after a heal, say): nothing to do.
    [[ $now == *"$ipv4"* ]] && return 0
    docker network disconnect "$network" "$node"
  fi
  docker network connect "${args[@]}" "$network" "$node" ||
    fail "docker could not reconnect $node with $ipv4${ipv6:+ and $ipv6}"
}

# Docker names a reconnected link eth1, eth2, ... (a counter per network namespace); the
# node is given its eth0 back, and docker's own name is kept in $ifname_file because
# docker removes the link by that name on the next disconnect.
ifname_file=$kind_dir/ifname-$node
gateways() { docker network inspect "$network" -f '{{range .IPAM.Config}}{{.Gateway}} {{end}}'; }
restore_eth0() {
  local dn gw cmds=()
  dn=$(docker exec "$node" ip -o -4 addr show | awk -v ip="$ipv4" 'index($4, ip "/") == 1 {print $2}')
  [ -n "$dn" ] || fail "$node has no link with $ipv4 after the reconnect"
  [ "$dn" = eth0 ] && { rm -f "$ifname_file"; return 0; }
  echo "$dn" > "$ifname_file"
  # keep_addr_on_down: the IPv6 addresses survive the rename (which needs the link down).
  cmds+=("sysctl -qw net.ipv6.conf.$dn.keep_addr_on_down=1" "ip link set $dn down"
         "ip link set $dn name eth0" "ip link set eth0 up")
  for gw in $(gateways); do
    if [[ $gw == *:* ]]; then cmds+=("ip -6 route replace default via $gw dev eth0")
    else cmds+=("ip route replace default via $gw dev eth0"); fi
  done
  printf '%s\n' "${cmds[@]}" | docker exec -i "$node" sh -e || fail "could not rename $dn of $node to eth0"
}

# Makes eth0's link-local address usable. The kernel sends the Neighbor Solicitations for
# forwarded packets (a reply leaving with a LoadBalancer IP as its source) from the link's
# link-local address, and sends none while that address is tentative or failed its DAD: the
# node then reaches no neighbour over IPv6 for forwarded traffic (its own connections
# still work, from its global address). A relinked eth0 has been seen failing DAD against
# its own MAC after a heal or a start (dmesg: "duplicate address fe80::... used by <its
# MAC>"); docker's segment has unique MACs, so the address is put back without DAD.
fix_link_local() {
  docker exec -i "$node" sh -e <<'SH' || fail "could not repair the link-local address of $node"
sysctl -qw net.ipv6.conf.eth0.accept_dad=0 2>/dev/null || exit 0
for a in $(ip -6 -o addr show dev eth0 scope link | awk '/tentative|dadfailed/ {print $4}'); do
  ip -6 addr del "$a" dev eth0
  ip -6 addr add "$a" dev eth0 scope link nodad
done
SH
}

# Waits until the kubelet, started after $1 (RFC 3339, UTC), reports the Node Ready.
wait_ready() {
  local since=$1 i beat ready
  for i in $(seq 1 180); do
    ready=""; beat=""
    read -r ready beat < <(kc get node "$node" -o jsonpath='{range .status.conditions[?(@.type=="Ready")]}{.status} {.lastHeartbeatTime}{"\n"}{end}' 2>/dev/null) || true
    if [ "${ready:-}" = True ] && [[ ${beat:-} > "$since" || ${beat:-} == "$since" ]]; then return 0; fi
    sleep 1
  done
  fail "$node did not report Ready within 180 s (docker exec $node journalctl -u kubelet)"
}

case "$action" in
  cut)
    connected || { say "$node is already cut"; exit 0; }
    if [ -f "$ifname_file" ] && running; then
      dn=$(cat "$ifname_file")
      docker exec "$node" sh -ec "ip link set eth0 down; ip link set eth0 name $dn" ||
        fail "could not give $node's link its docker name $dn back"
    fi
    docker network disconnect "$network" "$node"
    rm -f "$ifname_file"
    say "$node cut from $network"
    ;;
  heal)
    running || fail "$node is stopped; use start"
    if connected; then
      say "$node is on $network already; repairing its routes"
    else
      reconnect
      restore_eth0
    fi
    fix_link_local
    # The pod routes went with the link.
    bash "$kind_here/cni.sh" --no-wait
    kc wait --for=condition=Ready "node/$node" --timeout=180s >/dev/null ||
      fail "$node is not Ready 180 s after the heal"
    bash "$kind_here/state.sh" endpoints
    say "$node healed ($ipv4${ipv6:+, $ipv6})"
    ;;
  stop)
    running || { say "$node is already stopped"; exit 0; }
    docker kill --signal KILL "$node" >/dev/null
    for _ in $(seq 1 30); do running || break; sleep 0.5; done
    running && fail "$node still runs after SIGKILL"
    say "$node killed"
    ;;
  start)
    if running; then
      say "$node is already running"
    else
      since=$(date -u +%Y-%m-%dT%H:%M:%SZ)
      reconnect
      docker start "$node" >/dev/null || fail "docker could not start $node"
      rm -f "$ifname_file"   # a new network namespace: docker's eth0 again
      fix_link_local
      # systemd, containerd and the kubelet come up; a new network namespace has no pod
      # routes and forwarding is off again.
      for _ in $(seq 1 60); do
        docker exec "$node" systemctl is-active -q kubelet 2>/dev/null && break
        sleep 1
      done
      bash "$kind_here/cni.sh" --no-wait
      wait_ready "$since"
      bash "$kind_here/state.sh" endpoints
      say "$node started ($ipv4${ipv6:+, $ipv6}) and Ready"
    fi
    ;;
  *) echo "usage: $0 NODE cut|heal|stop|start" >&2; exit 2 ;;
esac
