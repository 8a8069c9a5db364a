#!/usr/bin/env bash
# Builds etcd, kube-apiserver, kube-controller-manager, kube-proxy and kubectl from the Go
# modules at the version pinned in e2e/versions.env, into a cache that a second run reuses.
#
# Kubernetes' own go.mod points its k8s.io/* staging modules at local directories, which the
# module proxy does not ship; so we write a small build module that requires k8s.io/kubernetes
# and replaces each staging module by its published v0.x.y twin.
#
# Usage: build-kube.sh [--print-dir]   (prints the bin directory when done)
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=../versions.env
. "$here/versions.env"

cache_root=${FERROLB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ferrolb}
out="$cache_root/kube-$KUBE_VERSION"
bin="$out/bin"
tools=(etcd kube-apiserver kube-controller-manager kube-proxy kubectl)

have_all() {
  local t
  for t in "${tools[@]}"; do [ -x "$bin/$t" ] || return 1; done
  [ -f "$out/.complete" ]
}

if have_all; then
  [ "${1:-}" = "--print-dir" ] && echo "$bin"
  exit 0
fi

command -v go >/dev/null 2>&1 || {
  echo "ferrolb: the Go toolchain is missing; install Go 1.24 or newer (https://go.dev/doc/install) and put 'go' on PATH." >&2
  exit 1
}

minor=${KUBE_VERSION#v1.}          # 36.3
staging_version="v0.$minor"        # v0.36.3
mod="$out/module"
mkdir -p "$mod" "$bin"
cd "$mod"

echo "ferrolb: building Kubernetes $KUBE_VERSION binaries into $bin (first run only; takes several minutes)" >&2

kmod_json=$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION") || {
  echo "ferrolb: could not download k8s.io/kubernetes@$KUBE_VERSION from the Go module proxy ($(go env GOPROXY)); check that it is reachable." >&2
  exit 1
}
kgomod=$(printf '%s\n' "$kmod_json" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
gover=$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$kgomod")

{
  echo "module ferrolb.io/kube-build"
  echo
  echo "go $gover"
  echo
  echo "require k8s.io/kubernetes $KUBE_VERSION"
  echo
  echo "replace ("
  # Every staging replace in Kubernetes' go.mod: "k8s.io/x => ./staging/src/k8s.io/x"
  sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9.-]*\) => ./staging/src/.*#\1#p' "$kgomod" |
    while read -r m; do echo "	$m => $m $staging_version"; done
  echo ")"
} > go.mod

cat > tools.go <<'GO'
//go:build tools

// Package tools pins the commands this module builds.
package tools
GO

export GOFLAGS=-mod=mod
ldflags="-s -w"
for kv in "gitVersion=$KUBE_VERSION" "gitMajor=1" "gitMinor=${minor%%.*}" "gitTreeState=clean" "buildDate=1970-01-01T00:00:00Z"; do
  ldflags="$ldflags -X k8s.io/component-base/version.$kv -X k8s.io/client-go/pkg/version.$kv"
done

# etcd at the version Kubernetes requires (recorded in its go.mod).
go get "k8s.io/kubernetes@$KUBE_VERSION" >/dev/null 2>&1 || true
go build -trimpath -ldflags "$ldflags" -o "$bin/" \
  k8s.io/kubernetes/cmd/kube-apiserver \
  k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-proxy \
  k8s.io/kubernetes/cmd/kubectl
go build -trimpath -ldflags "-s -w" -o "$bin/etcd" go.etcd.io/etcd/server/v3

"$bin/kube-apiserver" --version >&2
"$bin/etcd" --version | head -1 >&2
touch "$out/.complete"
[ "${1:-}" = "--print-dir" ] && echo "$bin"
exit 0
