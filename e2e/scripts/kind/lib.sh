# Shared by the kind scripts (sourced): names, paths, versions, small helpers.
# shellcheck shell=bash

kind_here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(cd "$kind_here/../../.." && pwd)
# shellcheck source=../../versions.env
. "$repo_root/e2e/versions.env"

cache_root=${FERROLB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ferrolb}
kind_dir=${FERROLB_KIND_DIR:-/run/ferrolb-kind}
state_file=$kind_dir/cluster.json
cluster=ferrolb
network=kind
client=ferrolb-kind-client
label=ferrolb.io/kind

say() { echo "ferrolb kind: $*" >&2; }
fail() { say "$*"; exit 1; }

# A short, stable hash of the files (or stdin when none) given.
recipe_hash() {
  if [ $# -gt 0 ]; then cat "$@"; else cat; fi | sha256sum | cut -c1-12
}




image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

kind_bin() { echo "$cache_root/kind-$KIND_VERSION/bin/kind"; }

# The three image names (controller, speaker, echo), from `make images`' script when it is
# there, else the contract's defaults.
image_names() {
  if [ -f "$repo_root/e2e/scripts/images.sh" ]; then
    bash "$repo_root/e2e/scripts/images.sh" --print-names
  else
    local r=${IMAGE_REGISTRY:-ghcr.io/ferrolb} t=${IMAGE_TAG:-0.1.0}
    printf '%s\n' "$r/ferrolb-controller:$t" "$r/ferrolb-speaker:$t" "$r/ferrolb-e2e-echo:$t"
  fi
}

# kubectl against the cluster (the state dir's kubeconfig).
kubectl_path() { echo "$(bash "$repo_root/e2e/scripts/build-kube.sh" --print-dir)/kubectl"; }
kc() { "${kubectl_bin:=$(kubectl_path)}" --kubeconfig "$kind_dir/kubeconfig" "$@"; }

# The cluster's node containers, control plane first.
node_containers() {
  docker ps -a --filter "label=io.x-k8s.kind.cluster=$cluster" --format '{{.Names}}' | sort
}
