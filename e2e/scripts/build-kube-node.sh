#!/usr/bin/env bash
# Builds what a kind node needs beyond build-kube.sh's set: kubeadm, kubelet and
# kube-scheduler, at the version pinned in e2e/versions.env, into the same cache (a second
# run reuses them). Only `make kind` needs these, so the lab does not pay for them.
#
# Usage: build-kube-node.sh [--print-dir]   (prints the bin directory when done)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../versions.env
. "$here/../versions.env"
# shellcheck source=kube-module.sh
. "$here/kube-module.sh"

cache_root=${FERROLB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ferrolb}
out="$cache_root/kube-$KUBE_VERSION"
bin="$out/bin"
tools=(kubeadm kubelet kube-scheduler)

have_all() {
  local t
  for t in "${tools[@]}"; do [ -x "$bin/$t" ] || return 1; done
  [ -f "$out/.complete-node" ]
}

if ! have_all; then
  echo "ferrolb: building Kubernetes $KUBE_VERSION kubeadm, kubelet and kube-scheduler into $bin (first run only; several minutes)" >&2
  # A module directory of its own, so this never races a build-kube.sh run.
  kube_module "$out/module-node"
  mkdir -p "$bin"
  (cd "$out/module-node" && GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath -ldflags "$kube_ldflags" -o "$bin/" \
    k8s.io/kubernetes/cmd/kubeadm \
    k8s.io/kubernetes/cmd/kubelet \
    k8s.io/kubernetes/cmd/kube-scheduler)
  "$bin/kubeadm" version -o short >&2
  touch "$out/.complete-node"
fi
[ "${1:-}" = "--print-dir" ] && echo "$bin"
exit 0
