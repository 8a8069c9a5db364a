#!/usr/bin/env bash
# Fuzzes, for SECONDS each (default 20), the targets named (default: all of them):
#   wire     the speaker's packet codecs, from the golden frames in seeds/wire/
#   address  the IPPool address-entry parser (crds/src/address.rs), from seeds/address/
#   gossip   the gossip envelope, wire versions and checks (src/membership), from seeds/gossip/
# Safe to call from `make test`: installs cargo-fuzz into ~/.cargo/bin once, prefers an
# installed nightly toolchain, else stable with RUSTC_BOOTSTRAP=1, and falls back to
# `--sanitizer none` if the AddressSanitizer runtime is unavailable. Build output, corpus
# and crash artifacts stay in this directory (target/, corpus/<target>/,
# artifacts/<target>/, all git-ignored). Exits non-zero on a crash, leaving the input in
# artifacts/<target>/. Extra libFuzzer flags go in FUZZ_FLAGS (say -runs=10000000).
set -euo pipefail

all_targets=(wire address gossip)
seconds="${1:-20}"
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -lt 1 ]; then
    echo "usage: $0 SECONDS [TARGET...]   (targets: ${all_targets[*]})" >&2
    exit 2
fi
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all_targets[@]}")
for t in "${targets[@]}"; do
    [[ " ${all_targets[*]} " == *" $t "* ]] || { echo "fuzz: no target $t (${all_targets[*]})" >&2; exit 2; }
done

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export PATH="$HOME/.cargo/bin:$PATH"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz into ~/.cargo/bin (once)" >&2
    cargo install cargo-fuzz --locked
fi

# Each attempt: "toolchain sanitizer"; "-" is the default toolchain with RUSTC_BOOTSTRAP=1.
attempts=()
if command -v rustup >/dev/null 2>&1 && rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    attempts+=("nightly address" "nightly none")
fi
attempts+=("- address" "- none")

fuzz() { # fuzz TOOLCHAIN SANITIZER SUBCOMMAND ARGS...
    local toolchain="$1" sanitizer="$2" sub="$3"
    shift 3
    local common=(--fuzz-dir "$here" --target-dir "$here/target" --sanitizer "$sanitizer" --debug-assertions)
    if [ "$toolchain" = "-" ]; then
        RUSTC_BOOTSTRAP=1 cargo fuzz "$sub" "${common[@]}" "$@"
    else
        cargo "+$toolchain" fuzz "$sub" "${common[@]}" "$@"
    fi
}

chosen=""
for attempt in "${attempts[@]}"; do
    read -r toolchain sanitizer <<<"$attempt"
    echo "fuzz: building with toolchain ${toolchain/#-/default + RUSTC_BOOTSTRAP=1}, sanitizer $sanitizer" >&2
    if (cd "$here" && fuzz "$toolchain" "$sanitizer" build); then
        chosen="$attempt"
        break
    fi
done
if [ -z "$chosen" ]; then
    echo "fuzz: could not build the fuzz target with nightly or with stable + RUSTC_BOOTSTRAP=1, with or without a sanitizer." >&2
    exit 1
fi

read -r toolchain sanitizer <<<"$chosen"
cd "$here"
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    echo "fuzz: $t for ${seconds} s" >&2
    # shellcheck disable=SC2086 # FUZZ_FLAGS is a list of flags
    fuzz "$toolchain" "$sanitizer" run "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$seconds" -print_final_stats=1 ${FUZZ_FLAGS:-}
done
