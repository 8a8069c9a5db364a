#!/usr/bin/env bash
# Builds the Go tools that `make kind` needs, each once per pinned version, into the cache
# (~/.cache/ferrolb/<tool>-<version>/bin):
#   kind                                    sigs.k8s.io/kind            (KIND_VERSION)
#   containerd, ctr, containerd-shim-runc-v2 containerd                 (CONTAINERD_VERSION)
#   crictl                                  sigs.k8s.io/cri-tools                  (CRICTL_VERSION)
#   bridge, host-local, loopback, portmap, ptp  CNI plugins             (CNI_PLUGINS_VERSION)
# All are static (CGO_ENABLED=0): they run inside the node image, not on this host.
#
# Usage: tools.sh kind|node|all     (node: what goes into the node image)
#        tools.sh --print-dir NAME  (the bin directory of kind|containerd|crictl|cni)
set -euo pipefail
. "$(dirname "$0")/lib.sh"

dir_of() {
  case "$1" in
    kind) echo "$cache_root/kind-$KIND_VERSION/bin" ;;
    containerd) echo "$cache_root/containerd-$CONTAINERD_VERSION/bin" ;;
    crictl) echo "$cache_root/crictl-$CRICTL_VERSION/bin" ;;
    cni) echo "$cache_root/cni-plugins-$CNI_PLUGINS_VERSION/bin" ;;
    *) fail "unknown tool set $1" ;;
  esac
}

# install NAME VERSION LDFLAGS PACKAGE...: go install the packages at VERSION into NAME's
# bin directory unless a finished build is there.
install() {
  local name=$1 version=$2 ldflags=$3; shift 3
  local bin; bin=$(dir_of "$name")
  [ -f "$bin/.complete" ] && return 0
  command -v go >/dev/null 2>&1 || fail "the Go toolchain is missing; install Go 1.26 or newer and put 'go' on PATH."
  say "building $name $version (first run only)"
  local start=$SECONDS pkgs=() p
  for p in "$@"; do pkgs+=("$p@$version"); done
  mkdir -p "$bin"
  GOBIN=$bin CGO_ENABLED=0 GOFLAGS='' go install -trimpath -tags "no_btrfs no_devmapper no_zfs no_aufs" \
    -ldflags "-s -w $ldflags" "${pkgs[@]}" ||
    fail "could not build $name $version from the Go module proxy ($(go env GOPROXY))."
  touch "$bin/.complete"
  say "built $name $version in $((SECONDS - start)) s"
}

kind_tool() {
  install kind "$KIND_VERSION" "" sigs.k8s.io/kind
}

node_tools() {
  install containerd "$CONTAINERD_VERSION" \
    "-X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION" \
    github.com/containerd/containerd/v2/cmd/containerd \
    github.com/containerd/containerd/v2/cmd/ctr \
    github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2
  install crictl "$CRICTL_VERSION" \
    "-X sigs.k8s.io/cri-tools/pkg/version.Version=${CRICTL_VERSION#v}" \
    sigs.k8s.io/cri-tools/cmd/crictl
  install cni "$CNI_PLUGINS_VERSION" "" \
    github.com/containernetworking/plugins/plugins/main/bridge \
    github.com/containernetworking/plugins/plugins/main/loopback \
    github.com/containernetworking/plugins/plugins/main/ptp \
    github.com/containernetworking/plugins/plugins/ipam/host-local \
    github.com/containernetworking/plugins/plugins/meta/portmap
}

case "${1:-}" in
  kind) kind_tool ;;
  node) node_tools ;;
  all) kind_tool; node_tools ;;
  --print-dir) dir_of "${2:?tool set}" ;;
  *) echo "usage: $0 kind|node|all | --print-dir kind|containerd|crictl|cni" >&2; exit 2 ;;
esac
