#!/usr/bin/env bash
# `make kind`: the kind cluster `ferrolb` with ferrolb installed, reachable from a client
# container on the kind network. Idempotent: a second run reuses the cluster, reloads the
# images and upgrades the installation.
#
#   KIND_IP_FAMILY=ipv4|ipv6|dual   (default ipv4)
#   KIND_PROXY_MODE=iptables|nftables (default iptables)
#   KIND_NODE_IMAGE=IMAGE           the node image; default kindest/node:<KUBE_VERSION> when
#                                   it is present or can be pulled, else one built here
#                                   (node-image.sh)
#   FERROLB_KIND_DIR                state directory (default /run/ferrolb-kind)
#
# Steps: engine, kind binary, node image, the `kind` network (made here, with fixed subnets,
# so that node.sh can give a node its addresses back), the cluster (1 control plane + 3
# workers), pod networking (cni.sh), the client container, the state file, then ferrolb:
# images loaded, chart (or `kubectl apply -k deploy/`), the IPPool `kind`, a demo Service
# in ferrolb-demo and a curl to its LoadBalancer IP from the client.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

family=${KIND_IP_FAMILY:-ipv4}
proxy_mode=${KIND_PROXY_MODE:-iptables}
case "$family" in ipv4|ipv6|dual) ;; *) fail "KIND_IP_FAMILY=$family: use ipv4, ipv6 or dual" ;; esac
case "$proxy_mode" in iptables|nftables) ;; *) fail "KIND_PROXY_MODE=$proxy_mode: use iptables or nftables" ;; esac
t0=$SECONDS
# python3 does the address arithmetic (free subnet, pool), jq the JSON.
for c in python3 jq; do command -v "$c" >/dev/null 2>&1 || fail "$c is missing; install it (Debian: apt-get install $c)"; done
step() { say "[$((SECONDS - t0)) s] $*"; }

# --- engine -------------------------------------------------------------------------
bash "$kind_here/engine.sh" start
engine_ours=false
bash "$kind_here/engine.sh" is-ours && engine_ours=true
mkdir -p "$kind_dir"
# Once true (the engine is one engine.sh started), it stays true for kind-down.
if [ -f "$state_file" ] && [ "$(jq -r .engine_started_by_us "$state_file" 2>/dev/null)" = true ]; then
  engine_ours=true
fi
kubeconfig=$kind_dir/kubeconfig

# --- tools --------------------------------------------------------------------------
bash "$kind_here/tools.sh" kind
kind=$(kind_bin)



# --- node image ---------------------------------------------------------------------
official=kindest/node:$KUBE_VERSION
if [ -n "${KIND_NODE_IMAGE:-}" ]; then
  node_image=$KIND_NODE_IMAGE
  image_exists "$node_image" || docker pull "$node_image" ||
    fail "KIND_NODE_IMAGE=$node_image is neither in the engine nor pullable"
elif image_exists "$official"; then
  node_image=$official
elif timeout 60 docker pull "$official" >/dev/null 2>&1; then
  node_image=$official
else
  step "$official cannot be pulled (no registry reachable); using a node image built here"
  node_image=$(bash "$kind_here/node-image.sh" --print-name)
fi
step "node image: $node_image"

# --- network ------------------------------------------------------------------------
# kind uses a network called `kind` when one exists. Ours has both subnets configured,
# which docker requires for `network connect --ip/--ip6` (node.sh heal/start).
if ! docker network inspect "$network" >/dev/null 2>&1; then
  mapfile -t nets < <(docker network ls -q)
  used=$( { ip -o -4 route show | awk '{print $1}'
            docker network inspect -f '{{range .IPAM.Config}}{{.Subnet}} {{end}}' "${nets[@]}" 2>/dev/null | tr ' ' '\n'; } | grep . || true)
  subnet4=$(python3 - "$used" <<'PY'
import ipaddress, sys
used = [ipaddress.ip_network(u, strict=False) for u in sys.argv[1].split() if ":" not in u and u != "default"]
for i in range(18, 32):
    n = ipaddress.ip_network(f"172.{i}.0.0/16")
    if not any(n.overlaps(u) for u in used):
        print(n); break
PY
)
  [ -n "$subnet4" ] || fail "no free /16 in 172.18.0.0-172.31.255.255 for the kind network"
  subnet6=fc00:f853:ccd:e793::/64
  docker network create -d bridge \
    --subnet "$subnet4" --gateway "${subnet4%.0/16}.1" \
    --ipv6 --subnet "$subnet6" --gateway "${subnet6%/64}1" \
    -o com.docker.network.bridge.enable_ip_masquerade=true \
    -o com.docker.network.driver.mtu=1500 \
    --label "$label=network" "$network" >/dev/null
  step "created docker network $network ($subnet4, $subnet6)"
fi
read -r subnet4 subnet6 < <(docker network inspect "$network" -f '{{range .IPAM.Config}}{{.Subnet}} {{end}}' |
  tr ' ' '\n' | grep . | sort -t: -k1,1 | awk '/:/ {v6=$0} !/:/ {v4=$0} END {print v4, v6}')

# --- cluster ------------------------------------------------------------------------
exists() { "$kind" get clusters 2>/dev/null | grep -qx "$cluster"; }
if exists && [ -f "$state_file" ]; then
  was=$(jq -r '.ip_family + " " + .proxy_mode' "$state_file")
  if [ "$was" != "$family $proxy_mode" ]; then
    step "cluster $cluster runs $was; $family $proxy_mode was asked for: recreating it"
    "$kind" delete cluster --name "$cluster"
  fi
fi
if exists; then
  step "reusing kind cluster $cluster"
  running=$(docker inspect -f '{{.State.Running}}' "$cluster-control-plane" 2>/dev/null || echo false)
  [ "$running" = true ] || fail "cluster $cluster exists but $cluster-control-plane is not running; make kind-down and try again"
else
  # What node.sh and install.sh remembered about an earlier cluster's containers.
  rm -f "$kind_dir"/ifname-* "$kind_dir/endpoints.json" "$kind_dir/images.loaded"
  config=$kind_dir/kind-config.yaml
  sed -e "s/@IP_FAMILY@/$family/" -e "s/@PROXY_MODE@/$proxy_mode/" "$repo_root/e2e/kind/cluster.yaml.tmpl" > "$config"
  step "creating kind cluster $cluster ($family, kube-proxy $proxy_mode, 1 control plane + 3 workers)"
  "$kind" create cluster --name "$cluster" --image "$node_image" --config "$config" \
    --kubeconfig "$kubeconfig" --retain=false ||
    fail "kind create cluster failed (above); 'make kind-down' removes what is left"
fi
"$kind" get kubeconfig --name "$cluster" > "$kubeconfig.tmp" && mv "$kubeconfig.tmp" "$kubeconfig"
chmod 0600 "$kubeconfig"

# --- pod network, client ----------------------------------------------------------------
bash "$kind_here/cni.sh"
step "nodes Ready"
base=$(bash "$kind_here/base-image.sh" --print-name)
if [ "$(docker inspect -f '{{.State.Running}}' "$client" 2>/dev/null)" != true ]; then
  docker rm -f "$client" >/dev/null 2>&1 || true
  docker run -d --name "$client" --hostname "$client" --network "$network" \
    --cap-add NET_ADMIN --cap-add NET_RAW --label "$label=client" \
    --sysctl net.ipv6.conf.all.disable_ipv6=0 \
    "$base" sleep infinity 2> >(grep -v 'IPv4 forwarding is disabled' >&2) >/dev/null
  step "started client container $client"
fi

# --- state --------------------------------------------------------------------------
mapfile -t names < <(image_names)
controller_image=${names[0]}; speaker_image=${names[1]}; echo_image=${names[2]}
pool=$(python3 - "$family" "$subnet4" "$subnet6" <<'PY'
import ipaddress, json, sys
family, s4, s6 = sys.argv[1:4]
out = []
# The top of each subnet, which docker (handing out addresses from the bottom) never reaches.
if family in ("ipv4", "dual"):
    n = ipaddress.ip_network(s4)
    top = n.broadcast_address
    out.append(f"{top - 55}-{top - 5}")
if family in ("ipv6", "dual"):
    n = ipaddress.ip_network(s6)
    base = int(n.network_address) + (0xffff << 48)
    out.append(f"{ipaddress.IPv6Address(base + 200)}-{ipaddress.IPv6Address(base + 250)}")
print(json.dumps(out))
PY
)
bash "$kind_here/state.sh" write "$family" "$proxy_mode" "$node_image" "$engine_ours" "$pool" \
  "$controller_image" "$speaker_image" "$echo_image"
step "state written to $state_file"
cat > "$kind_dir/env" <<EOF
export KUBECONFIG=$kubeconfig
EOF

# --- ferrolb ------------------------------------------------------------------------
bash "$kind_here/install.sh"
step "make kind: done. kubectl: export KUBECONFIG=$kubeconfig"
