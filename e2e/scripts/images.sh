#!/usr/bin/env bash
# `make images`: ferrolb's container images, built on this machine with nothing pulled.
#
#   images.sh                 build the three images (cached: seconds when nothing changed)
#   images.sh --print-names   print their full names, one per line: controller, speaker, echo
#
# IMAGE_REGISTRY (default ghcr.io/ferrolb) and IMAGE_TAG (default the workspace version in
# Cargo.toml) choose the names. The binaries are compiled once, statically linked against
# glibc (crt-static, so every image is FROM scratch), in one cargo invocation with the
# `image` profile; each image's build context is a directory holding only its binary, so
# docker never receives target/. The images' version and revision labels are what the
# binaries themselves print for --version.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)

say() { echo "ferrolb images: $*" >&2; }
fail() { say "$*"; exit 1; }

# The workspace version: the first `version = "..."` of [workspace.package].
version=$(awk '
  /^\[/ { in_pkg = ($0 == "[workspace.package]") }
  in_pkg && /^version *= *"/ { gsub(/^version *= *"|".*$/, ""); print; exit }
' "$root/Cargo.toml")
[ -n "$version" ] || fail "no version in [workspace.package] of $root/Cargo.toml"
registry=${IMAGE_REGISTRY:-ghcr.io/ferrolb}
tag=${IMAGE_TAG:-$version}

# image name, binary, Dockerfile (relative to the repository)
images=(
  "$registry/ferrolb-controller:$tag ferrolb-controller controller/Dockerfile"
  "$registry/ferrolb-speaker:$tag ferrolb-speaker speaker/Dockerfile"
  "$registry/ferrolb-e2e-echo:$tag ferrolb-lab e2e/echo.Dockerfile"
)

case "${1:-}" in
  --print-names)
    for i in "${images[@]}"; do echo "${i%% *}"; done
    exit 0
    ;;
  "") ;;
  *) echo "usage: $0 [--print-names]" >&2; exit 2 ;;
esac

start=$(date +%s)
bash "$root/e2e/scripts/kind/engine.sh" start

target=x86_64-unknown-linux-gnu
target_dir=${CARGO_TARGET_DIR:-$root/target}
bin_dir=$target_dir/$target/image
say "compiling the static binaries (cargo --profile image --target $target)"
# RUSTFLAGS reach only the --target artifacts: build scripts and proc macros stay as usual.
(cd "$root" && RUSTFLAGS="-C target-feature=+crt-static" cargo build \
  --profile image --target "$target" \
  -p ferrolb-controller -p ferrolb-speaker -p ferrolb-e2e \
  --bin ferrolb-controller --bin ferrolb-speaker --bin ferrolb-lab)

ctx_root=$target_dir/images

# The programs the speaker executes (speaker/src/forwarding/kernel.rs runs `nft` for
# NodePort forwarding; check `grep -rn 'Command::new' speaker/src`): its image carries this
# host's copy of each, with the shared libraries `ldd` says it loads, at the paths `ldd`
# names, and nothing more.
speaker_programs=(nft)
speaker_rootfs() {
  local dir=$1 prog path lib
  rm -rf "$dir.new"; mkdir -p "$dir.new"
  for prog in "${speaker_programs[@]}"; do
    path=$(PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH command -v "$prog") ||
      fail "$prog is missing on this host, and the speaker image carries it: install it (Debian: apt-get install nftables)"
    install -D -m 0755 "$(readlink -f "$path")" "$dir.new/usr/sbin/$prog"
    # "libx.so.1 => /lib/x86_64-linux-gnu/libx.so.1 (0x...)" and "/lib64/ld-linux-x86-64.so.2 (0x...)"
    for lib in $(ldd "$path" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'); do
      install -D -m 0755 "$(readlink -f "$lib")" "$dir.new$lib"
    done
  done
  # Replaced only when something differs, so docker's layer cache holds.
  if [ -d "$dir" ] && diff -r "$dir" "$dir.new" > /dev/null 2>&1; then
    rm -rf "$dir.new"
  else
    rm -rf "$dir"; mv "$dir.new" "$dir"
  fi
}
for i in "${images[@]}"; do
  read -r name bin dockerfile <<< "$i"
  ctx=$ctx_root/$bin
  mkdir -p "$ctx"
  # Copied only when it changed, so an unchanged binary keeps docker's layer cache.
  cmp -s "$bin_dir/$bin" "$ctx/$bin" || cp "$bin_dir/$bin" "$ctx/$bin"
  if [ "$bin" = ferrolb-speaker ]; then speaker_rootfs "$ctx/rootfs"; fi
  # Exactly what the binary says, e.g. "ferrolb-lab 0.1.0 (git 1a2b3c4d5e6f)".
  printed=$("$ctx/$bin" --version) || fail "$bin --version failed (is it statically linked?)"
  revision=$(sed -n 's/.*(git \(.*\))$/\1/p' <<< "$printed")
  [ -n "$revision" ] || fail "$bin --version printed '$printed', without '(git COMMIT)'"
  old=$(docker image inspect -f '{{.Id}}' "$name" 2>/dev/null || true)
  # The classic builder (docker 20.10 here has no BuildKit); its deprecation notice is
  # shown only when the build fails.
  if ! out=$(DOCKER_BUILDKIT=0 docker build -q \
    -f "$root/$dockerfile" \
    --build-arg "VERSION=$version" \
    --build-arg "REVISION=$revision" \
    -t "$name" "$ctx" 2>&1); then
    printf '%s\n' "$out" >&2
    fail "docker build of $name failed"
  fi
  new=$(docker image inspect -f '{{.Id}}' "$name")
  if [ -n "$old" ] && [ "$old" != "$new" ]; then
    # The image this name held before, now untagged: ours to remove (kept if still used).
    docker rmi "$old" > /dev/null 2>&1 || true
  fi
  size=$(docker image inspect -f '{{.Size}}' "$name")
  say "$name ($revision): $(awk -v b="$size" 'BEGIN { printf "%.1f MB", b / 1e6 }')"
done
say "done in $(( $(date +%s) - start )) s"
