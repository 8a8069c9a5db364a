#!/usr/bin/env bash
# Builds etcd, kube-apiserver, kube-controller-manager, kube-proxy and kubectl from the Go
# modules at the version pinned in e2e/versions.env, into a cache that a second run reuses.
# They are static (CGO_ENABLED=0, as Kubernetes' own release builds): the lab runs them on
# this host, and the kind node image puts them into FROM-scratch images.
#
# The build module (k8s.io/kubernetes with its staging modules replaced by their published
# twins) is written by kube-module.sh, shared with build-kube-node.sh.
#
# Usage: build-kube.sh [--print-dir]   (prints the bin directory when done)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../versions.env
. "$here/../versions.env"
# shellcheck source=kube-module.sh
. "$here/kube-module.sh"

cache_root=${FERROLB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ferrolb}
out="$cache_root/kube-$KUBE_VERSION"
bin="$out/bin"
tools=(etcd kube-apiserver kube-controller-manager kube-proxy kubectl)
# Names the kind of build: binaries of an older, dynamically linked build are rebuilt.
marker="$out/.complete-static"

have_all() {
  local t
  for t in "${tools[@]}"; do [ -x "$bin/$t" ] || return 1; done
  [ -f "$marker" ]
}

if have_all; then
  [ "${1:-}" = "--print-dir" ] && echo "$bin"
  exit 0
fi

echo "ferrolb: building Kubernetes $KUBE_VERSION binaries into $bin (first run only; takes several minutes)" >&2
kube_module "$out/module"
mkdir -p "$bin"
cd "$out/module"
export GOFLAGS=-mod=mod CGO_ENABLED=0
go build -trimpath -ldflags "$kube_ldflags" -o "$bin/" \
  k8s.io/kubernetes/cmd/kube-apiserver \
  k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-proxy \
  k8s.io/kubernetes/cmd/kubectl
# etcd at the version Kubernetes requires (recorded in its go.mod).
go build -trimpath -ldflags "-s -w" -o "$bin/etcd" go.etcd.io/etcd/server/v3

"$bin/kube-apiserver" --version >&2
"$bin/etcd" --version | head -1 >&2
rm -f "$out/.complete"
touch "$marker"
[ "${1:-}" = "--print-dir" ] && echo "$bin"
exit 0
