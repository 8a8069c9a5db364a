#!/usr/bin/env bash
# Makes sure this machine has what `make test` needs, installing what it can, idempotently:
# Debian packages, the Rust components, the Kubernetes binaries and helm (built from the Go
# modules, cached). When something is missing and cannot be installed, it says so in one
# sentence and fails; nothing is skipped.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

fail() { echo "ferrolb: $*" >&2; exit 1; }

# Debian packages: command -> package.
declare -A need=(
  [cc]=gcc
  [git]=git
  [curl]=curl
  [ip]=iproute2
  [sysctl]=procps
  [iptables]=iptables
  [nft]=nftables
  [arping]=arping
  [ndisc6]=ndisc6
  [tcpdump]=tcpdump
  [conntrack]=conntrack
)
missing=()
for cmd in "${!need[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${need[$cmd]}")
done
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || fail "missing Debian packages (${missing[*]}); run 'make test' as root or install them with apt-get."
  command -v apt-get >/dev/null 2>&1 || fail "missing packages (${missing[*]}) and no apt-get to install them; install them by hand."
  echo "ferrolb: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null || fail "apt-get update failed; check that Debian's package mirrors are reachable."
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
    fail "apt-get could not install ${missing[*]}; check that Debian's package mirrors are reachable."
fi

command -v cargo >/dev/null 2>&1 || fail "the Rust toolchain is missing; install it with rustup (https://rustup.rs) and put cargo on PATH."
cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt >/dev/null 2>&1 ||
  fail "rustfmt is missing and 'rustup component add rustfmt' failed; install it for the active toolchain."
cargo clippy --version >/dev/null 2>&1 || rustup component add clippy >/dev/null 2>&1 ||
  fail "clippy is missing and 'rustup component add clippy' failed; install it for the active toolchain."
command -v go >/dev/null 2>&1 || fail "the Go toolchain is missing; install Go 1.26 or newer (https://go.dev/doc/install) and put 'go' on PATH."

# Cargo's shared build directory (the Makefile's CARGO_BUILD_BUILD_DIR) gains every
# checkout's own crates; past the cap it is emptied, and the next build compiles everything.
build_dir=${CARGO_BUILD_BUILD_DIR:-}
max_gib=${FERROLB_BUILD_DIR_MAX_GIB:-40}
if [ -n "$build_dir" ] && [ -d "$build_dir" ]; then
  gib=$(( $(du -sk "$build_dir" | cut -f1) / 1024 / 1024 ))
  if [ "$gib" -gt "$max_gib" ]; then
    echo "ferrolb: cargo's build directory $build_dir holds $gib GiB (over $max_gib): emptying it" >&2
    rm -rf "$build_dir"
  fi
fi

bash "$here/build-kube.sh"
bash "$here/build-helm.sh"
