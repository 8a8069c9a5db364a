#!/usr/bin/env bash
# Builds ferrolb's kind node image for KUBE_VERSION from what this machine can reach (Debian
# packages, Go modules, kind's own files from the sigs.k8s.io/kind module), for hosts where
# kindest/node cannot be pulled. The image is tagged
#   ferrolb.io/kind-node:<KUBE_VERSION>-<recipe hash>  and  ferrolb.io/kind-node:<KUBE_VERSION>
# where the hash covers what goes in (e2e/kind/'s image files, the build scripts, the pins
# of e2e/versions.env they use): an image that exists for the current recipe is reused; a
# changed recipe builds a new one.
#
# What goes in, as kind's images/base/Dockerfile and pkg/build/nodeimage do it:
#   - the Debian base (base-image.sh) with kind's files and unit set-up;
#   - containerd, ctr, shim, crictl, CNI plugins (tools.sh), kubeadm, kubelet, kubectl;
#   - preloaded into the node's containerd (namespace k8s.io), under the names
#     `kubeadm config images list` prints: kube-apiserver, kube-controller-manager,
#     kube-scheduler, etcd (FROM scratch, static binaries), kube-proxy (FROM the base:
#     iptables, nftables, conntrack), pause (pause.c, gcc -static). CoreDNS is left out:
#     the cluster config skips kubeadm's coredns addon (ferrolb needs no DNS).
#
# Usage: node-image.sh [--print-name]
set -euo pipefail
. "$(dirname "$0")/lib.sh"

repo=ferrolb.io/kind-node
inputs=(
  "$repo_root"/e2e/kind/base-packages.txt
  "$repo_root"/e2e/kind/images/*
  "$repo_root"/e2e/kind/node/*
  "$kind_here"/base-image.sh "$kind_here"/tools.sh "$kind_here"/node-image.sh
  "$repo_root"/e2e/scripts/build-kube.sh "$repo_root"/e2e/scripts/build-kube-node.sh
  "$repo_root"/e2e/scripts/kube-module.sh
)
# The pins the image depends on (not all of versions.env: other pins do not change it).
hash=$( { cat "${inputs[@]}"
          printf '%s\n' "$KUBE_VERSION" "$KIND_VERSION" "$CONTAINERD_VERSION" "$CRICTL_VERSION" "$CNI_PLUGINS_VERSION"
        } | recipe_hash)
image=$repo:$KUBE_VERSION-$hash
name=$repo:$KUBE_VERSION

done_() {
  docker tag "$image" "$name"
  [ "${1:-}" = "--print-name" ] && echo "$name"
  exit 0
}

if image_exists "$image"; then
  say "node image $name is built for this recipe ($hash); reusing it"
  done_ "$@"
fi

say "building the node image $name locally (recipe $hash): no registry can be reached for kindest/node"
start=$SECONDS
work=$(mktemp -d "${TMPDIR:-/tmp}/ferrolb-node.XXXXXX")
builder=""
cleanup() {
  [ -n "$builder" ] && docker rm -f "$builder" >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT
export DOCKER_BUILDKIT=0
# Runs a command with its output in a log, shown only when it fails (docker's classic
# builder warns on every build).
quiet() {
  local log=$work/step.log
  "$@" > "$log" 2>&1 || { tail -30 "$log" >&2; return 1; }
}

# The network-bound step (debootstrap) runs while the Go builds take the CPU.
bash "$kind_here/base-image.sh" --print-name > "$work/base-name" 2> >(cat >&2) &
base_pid=$!
bash "$kind_here/tools.sh" node
kube_bin=$(bash "$repo_root/e2e/scripts/build-kube.sh" --print-dir)
node_bin=$(bash "$repo_root/e2e/scripts/build-kube-node.sh" --print-dir)
wait "$base_pid" || fail "the base image failed to build (above)"
base=$(cat "$work/base-name")

for b in kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubeadm kubelet kubectl etcd; do
  f=$kube_bin/$b; [ -x "$f" ] || f=$node_bin/$b
  [ -x "$f" ] || fail "$b is missing from $kube_bin"
  # FROM scratch images need static binaries (build-kube.sh builds with CGO_ENABLED=0).
  # (ldd succeeds only for a dynamically linked program.)
  if ldd "$f" >/dev/null 2>&1; then
    fail "$f is dynamically linked; rebuild the Kubernetes binaries (rm -rf $(dirname "$kube_bin")/.complete* and rerun)"
  fi
done

# The images kubeadm will ask for, by the names it prints.
mapfile -t wanted < <("$node_bin/kubeadm" config images list --kubernetes-version "$KUBE_VERSION" 2>/dev/null)
[ ${#wanted[@]} -gt 0 ] || fail "kubeadm config images list printed nothing"
pause_image=""
component_images=()
build_component() { # NAME DOCKERFILE CONTEXT [BUILD-ARG...]
  local img=$1 df=$2 ctx=$3; shift 3
  local args=() a
  for a in "$@"; do args+=(--build-arg "$a"); done
  quiet docker build -q -f "$df" "${args[@]}" --label "$label.recipe=$hash" -t "$img" "$ctx" ||
    fail "could not build $img"
  component_images+=("$img")
}
for img in "${wanted[@]}"; do
  short=${img##*/}; short=${short%%:*}
  ctx=$work/img-$short; mkdir -p "$ctx"
  case "$short" in
    kube-apiserver|kube-controller-manager|kube-scheduler|etcd)
      f=$kube_bin/$short; [ -x "$f" ] || f=$node_bin/$short
      cp "$f" "$ctx/"
      build_component "$img" "$repo_root/e2e/kind/images/static.Dockerfile" "$ctx" "BIN=$short" ;;
    kube-proxy)
      cp "$kube_bin/kube-proxy" "$ctx/"
      build_component "$img" "$repo_root/e2e/kind/images/kube-proxy.Dockerfile" "$ctx" "BASE=$base" ;;
    pause)
      pause_image=$img
      src=$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | jq -r .Dir)/build/pause/linux/pause.c
      gcc -Os -Wall -Werror -static -DVERSION="${img##*:}" -o "$ctx/pause" "$src" ||
        fail "gcc could not build pause.c statically (is libc6-dev installed?)"
      strip "$ctx/pause"
      build_component "$img" "$repo_root/e2e/kind/images/pause.Dockerfile" "$ctx" ;;
    coredns) say "leaving out $img: the cluster runs without CoreDNS" ;;
    *) fail "kubeadm wants $img, which this recipe does not know how to build" ;;
  esac
done
[ -n "$pause_image" ] || fail "kubeadm named no pause image"

# The node's build context: kind's files with kind's modes, the binaries.
kind_src=$(cd "$work" && GOFLAGS='' go mod download -json "sigs.k8s.io/kind@$KIND_VERSION" | jq -r .Dir)/images/base/files
ctx=$work/node
mkdir -p "$ctx/kind-files" "$ctx/bin" "$ctx/cni" "$ctx/kube"
cp -r "$kind_src"/. "$ctx/kind-files/"
chmod -R u+w "$ctx/kind-files"
find "$ctx/kind-files" -type d -exec chmod 0755 {} +
find "$ctx/kind-files" -type f -exec chmod 0644 {} +
chmod 0755 "$ctx"/kind-files/usr/local/bin/* "$ctx"/kind-files/kind/bin/*
mkdir -p "$ctx/kind-files/kind/manifests"
cp "$repo_root/e2e/kind/node/default-storage.yaml" "$ctx/kind-files/kind/manifests/"
cp "$(bash "$kind_here/tools.sh" --print-dir containerd)"/{containerd,ctr,containerd-shim-runc-v2} "$ctx/bin/"
cp "$(bash "$kind_here/tools.sh" --print-dir crictl)"/crictl "$ctx/bin/"
cp "$(bash "$kind_here/tools.sh" --print-dir cni)"/{bridge,host-local,loopback,portmap,ptp} "$ctx/cni/"
cp "$node_bin"/{kubeadm,kubelet} "$kube_bin"/kubectl "$ctx/kube/"
stage=$repo:build-$hash
quiet docker build -q -f "$repo_root/e2e/kind/node/Dockerfile" \
  --build-arg "BASE=$base" --build-arg "KUBE_VERSION=$KUBE_VERSION" --build-arg "PAUSE_IMAGE=$pause_image" \
  -t "$stage" "$ctx" || fail "the node image's Dockerfile failed (above)"

# Preload the component images into the node's containerd, then commit (kind's way:
# containerd runs in a plain container of the image; the images go in unpacked later).
builder=ferrolb-node-build-$hash-$$
quiet docker run -d --name "$builder" --entrypoint sleep --security-opt seccomp=unconfined "$stage" infinity
docker exec "$builder" bash -c 'containerd > /tmp/containerd.log 2>&1 & echo $! > /tmp/containerd.pid'
for _ in $(seq 1 60); do
  docker exec "$builder" ctr version >/dev/null 2>&1 && break
  sleep 0.5
done
docker exec "$builder" ctr version >/dev/null 2>&1 || {
  docker exec "$builder" tail -20 /tmp/containerd.log >&2; fail "containerd did not start in the build container"; }
docker save "${component_images[@]}" |
  docker exec -i "$builder" ctr --namespace=k8s.io images import \
    --label=io.cri-containerd.pinned=pinned --all-platforms --no-unpack --digests - > "$work/import.log" 2>&1 ||
  { tail -20 "$work/import.log" >&2; fail "could not import the component images into the node's containerd"; }
have=$(docker exec "$builder" ctr --namespace=k8s.io images list -q 2>/dev/null)
for img in "${component_images[@]}"; do
  grep -qxF "$img" <<< "$have" || fail "$img is missing from the node's containerd after the import"
done
# Its parent (the exec's shell) is gone and `sleep` does not reap, so "stopped" means a
# zombie or no process at all.
docker exec "$builder" bash -c 'p=$(cat /tmp/containerd.pid); kill "$p"
  while [ -e "/proc/$p" ] && [ "$(cut -d" " -f3 "/proc/$p/stat")" != Z ]; do sleep 0.2; done
  rm -f /tmp/containerd.pid /tmp/containerd.log'
docker commit \
  --change 'ENTRYPOINT [ "/usr/local/bin/entrypoint", "/sbin/init" ]' \
  --change "LABEL $label.recipe=$hash" \
  "$builder" "$image" >/dev/null
docker rm -f "$builder" >/dev/null; builder=""

# What only the build needed: the stage image, the component tags, older recipes' images
# (and what an interrupted build left).
docker rmi "$stage" "${component_images[@]}" >/dev/null 2>&1 || true
docker images --format '{{.Repository}}:{{.Tag}}' "$repo" | grep -vxF -e "$image" -e "$name" |
  grep -E ":($KUBE_VERSION-|build-)[0-9a-f]{12}\$" | xargs -r docker rmi >/dev/null 2>&1 || true
docker image prune -f --filter "label=$label.recipe" >/dev/null 2>&1 || true
say "built $image in $((SECONDS - start)) s ($(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%.2f GB", $1/1e9}'))"
done_ "$@"
