# Sourced by the scripts that build Kubernetes commands from the Go modules
# (build-kube.sh, build-kube-node.sh). Kubernetes' own go.mod points its k8s.io/* staging
# modules at local directories, which the module proxy does not ship; so the build runs in
# a small module that requires k8s.io/kubernetes and replaces each staging module by its
# published v0.x.y twin.
# shellcheck shell=bash

# kube_module DIR: writes that build module into DIR (idempotent) and sets
# kube_ldflags (the version stamps `kubectl version` and friends report).
kube_module() {
  local dir=$1 minor staging_version kmod_json kgomod gover
  command -v go >/dev/null 2>&1 || {
    echo "ferrolb: the Go toolchain is missing; install Go 1.26 or newer (https://go.dev/doc/install) and put 'go' on PATH." >&2
    return 1
  }
  minor=${KUBE_VERSION#v1.}          # 36.3
  staging_version="v0.$minor"        # v0.36.3
  mkdir -p "$dir"
  kmod_json=$(cd "$dir" && GOFLAGS= go mod download -json "k8s.io/kubernetes@$KUBE_VERSION") || {
    echo "ferrolb: could not download k8s.io/kubernetes@$KUBE_VERSION from the Go module proxy ($(go env GOPROXY)); check that it is reachable." >&2
    return 1
  }
  kgomod=$(printf '%s\n' "$kmod_json" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  kube_src=$(printf '%s\n' "$kmod_json" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  gover=$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$kgomod")
  if [ ! -f "$dir/go.mod" ] || ! grep -q "^require k8s.io/kubernetes $KUBE_VERSION\$" "$dir/go.mod"; then
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
    } > "$dir/go.mod"
    cat > "$dir/tools.go" <<'GO'
//go:build tools

// Package tools pins the commands this module builds.
package tools
GO
    # Resolves the requirements (etcd at the version Kubernetes records in its go.mod).
    (cd "$dir" && GOFLAGS=-mod=mod go get "k8s.io/kubernetes@$KUBE_VERSION" >/dev/null 2>&1) || true
  fi
  local kv
  kube_ldflags="-s -w"
  for kv in "gitVersion=$KUBE_VERSION" "gitMajor=1" "gitMinor=${minor%%.*}" "gitTreeState=clean" "buildDate=1970-01-01T00:00:00Z"; do
    kube_ldflags="$kube_ldflags -X k8s.io/component-base/version.$kv -X k8s.io/client-go/pkg/version.$kv"
  done
}
