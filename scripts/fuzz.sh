#!/usr/bin/env bash
# Runs each cargo-fuzz target for a bounded time. The committed corpus (fuzz/corpus/<target>: a
# few dozen hand-written frames and minimized finds) seeds a working corpus in fuzz/work/<target>
# (not committed; it grows to thousands of files). Usage: scripts/fuzz.sh [seconds per target, default 120]
# [target ...]. Needs `cargo install cargo-fuzz --locked`. Only a stable toolchain is assumed:
# RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its -Z flags, and --sanitizer none skips ASan (safe Rust
# only here). Builds go to their own target directory, away from the workspace's.
# A crash leaves its input in fuzz/artifacts/<target>/ and fails the script.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-120}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(relay_frame signal_payload)
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$HOME/.cache/videocall/fuzz-target}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
for target in "${targets[@]}"; do
    mkdir -p "work/$target"
    echo "== $target: ${seconds}s"
    cargo fuzz run --sanitizer none "$target" "work/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -max_len=8192 -timeout=10 -print_final_stats=1
done
