#!/usr/bin/env bash
# Builds `helm` from its Go module at the version pinned in e2e/versions.env (HELM_VERSION),
# into a cache that a second run reuses: ${FERROLB_CACHE:-~/.cache/ferrolb}/helm-<version>/helm.
#
# helm.sh/helm/v4 has no replace directives, so `go install module@version` builds it as
# released; the version is stamped the way Helm's own Makefile does it.
#
# Usage: build-helm.sh [--print-path]   (prints the path of the binary when done)
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=../versions.env
. "$here/versions.env"

fail() { echo "ferrolb: $*" >&2; exit 1; }

[ -n "${HELM_VERSION:-}" ] || fail "HELM_VERSION is not set in $here/versions.env; add the pinned Helm version there."
case "$HELM_VERSION" in
  v4.*) module=helm.sh/helm/v4 ;;
  v3.*) module=helm.sh/helm/v3 ;;
  *) fail "HELM_VERSION=$HELM_VERSION in $here/versions.env is not a Helm v3 or v4 release tag." ;;
esac

cache_root=${FERROLB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ferrolb}
out="$cache_root/helm-$HELM_VERSION"
helm="$out/helm"

print() { if [ "${1:-}" = "--print-path" ]; then echo "$helm"; fi; }

# .complete is written last, so a build that was interrupted is redone.
if [ -x "$helm" ] && [ -f "$out/.complete" ]; then
  print "${1:-}"
  exit 0
fi

command -v go >/dev/null 2>&1 ||
  fail "the Go toolchain is missing; install Go 1.26 or newer (https://go.dev/doc/install) and put 'go' on PATH."

echo "ferrolb: building helm $HELM_VERSION into $out (first run only; takes a few minutes)" >&2
mkdir -p "$out"
rm -f "$out/.complete"
tmp=$(mktemp -d "$out/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

ldflags="-s -w -X $module/internal/version.version=$HELM_VERSION -X $module/internal/version.gitTreeState=clean"
# GOFLAGS=-mod=mod would be refused by `go install module@version`; GOBIN puts the binary
# in our temporary directory, renamed into place only once it runs.
GOFLAGS= GOBIN="$tmp" CGO_ENABLED=0 go install -trimpath -ldflags "$ldflags" "$module/cmd/helm@$HELM_VERSION" ||
  fail "could not build $module@$HELM_VERSION with $(go version | cut -d' ' -f3); check that the Go module proxy ($(go env GOPROXY)) is reachable and Go is new enough."

got=$("$tmp/helm" version --template '{{.Version}}' 2>/dev/null) ||
  fail "the freshly built helm in $tmp does not run."
[ "$got" = "$HELM_VERSION" ] || fail "the freshly built helm says it is $got, not $HELM_VERSION."

mv -f "$tmp/helm" "$helm"
touch "$out/.complete"
echo "ferrolb: helm $HELM_VERSION ready: $helm" >&2
print "${1:-}"
exit 0
