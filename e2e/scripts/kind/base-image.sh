#!/usr/bin/env bash
# Builds the Debian base image that the kind node image, the kube-proxy image and the
# client container start from: debootstrap (minbase) from this machine's Debian mirror,
# with the packages in e2e/kind/base-packages.txt, imported into the engine as
# ferrolb.io/kind-base:<hash>. The hash covers the package list and this recipe, so a
# change to either builds a new image; an image that exists is reused.
#
# Usage: base-image.sh [--print-name]
set -euo pipefail
. "$(dirname "$0")/lib.sh"

# Bump when the steps below change in a way the package list does not show.
base_recipe=1

# The mirror and suite apt uses here (deb822 sources first, then the one-line format).
mirror() {
  local f uri
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    uri=$(awk '/^URIs:/ {print $2; exit}' "$f")
    [ -n "$uri" ] && { echo "$uri"; return; }
  done
  awk '$1 == "deb" && $0 !~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null
}
suite=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
url=${FERROLB_DEBIAN_MIRROR:-$(mirror)}
[ -n "$url" ] || url=http://deb.debian.org/debian
packages=$(grep -v '^#' "$repo_root/e2e/kind/base-packages.txt" | grep -v '^$' | sort -u | paste -sd, -)
hash=$(printf '%s\n' "$base_recipe" "$suite" "$packages" | recipe_hash)
image=ferrolb.io/kind-base:$hash

if image_exists "$image"; then
  [ "${1:-}" = "--print-name" ] && echo "$image"
  exit 0
fi

command -v debootstrap >/dev/null 2>&1 || {
  [ "$(id -u)" = 0 ] || fail "debootstrap is missing; install it (apt-get install debootstrap) or run as root."
  say "installing debootstrap"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null; } ||
    fail "apt-get could not install debootstrap; check that Debian's mirrors are reachable."
}

work=$(mktemp -d "${TMPDIR:-/tmp}/ferrolb-base.XXXXXX")
# debootstrap mounts /proc and /sys in the rootfs; a failed run can leave them there.
cleanup() {
  grep -F " $work/" /proc/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  rm -rf --one-file-system "$work"
}
trap cleanup EXIT
rootfs=$work/rootfs
log=$work/debootstrap.log
say "building the Debian base image $image (debootstrap $suite from $url; a few minutes, first run only)"
start=$SECONDS
if ! debootstrap --variant=minbase --include="$packages" "$suite" "$rootfs" "$url" > "$log" 2>&1; then
  tail -20 "$log" >&2
  [ -f "$rootfs/debootstrap/debootstrap.log" ] && tail -20 "$rootfs/debootstrap/debootstrap.log" >&2
  fail "debootstrap failed (above); check that $url is reachable."
fi
# What an image does not need: package lists, caches, documentation.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/var/cache/debconf/*-old \
  "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/var/log/*.log
# Docker provides these at run time.
: > "$rootfs/etc/resolv.conf"; : > "$rootfs/etc/hostname"
tar -C "$rootfs" --numeric-owner -c . |
  docker import \
    -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c "LABEL $label.recipe=$hash" \
    -m "debootstrap $suite minbase + $packages" - "$image" >/dev/null
say "built $image in $((SECONDS - start)) s"
[ "${1:-}" = "--print-name" ] && echo "$image"
exit 0
