#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, every test, a fuzz smoke of every
# fuzz target, and a build of every benchmark. Exits non-zero on the first failure.
#
#   PCIETUN_FUZZ_SECONDS   seconds per fuzz target (default 20; 0 skips the fuzz smoke)
#   PCIETUN_REQUIRE_ALL=1  any test that would print SKIPPED fails instead (CI sets this)
set -euo pipefail
cd "$(dirname "$0")/.."

"$(dirname "$0")/setup.sh"

step() { printf '\n=== %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check
# The fuzz crate is a workspace of its own: `cargo fmt --all` above does not reach it.
(cd fuzz && cargo fmt --all -- --check)

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --locked -- -D warnings

step "cargo test"
cargo test --locked --all-targets
cargo test --locked --doc

for script in tests/*.sh; do
    [ -e "$script" ] || continue
    step "$script"
    bash "$script"
done

fuzz_seconds="${PCIETUN_FUZZ_SECONDS:-20}"
if [ "$fuzz_seconds" != 0 ]; then
    step "fuzz smoke (${fuzz_seconds}s per target)"
    export RUSTC_BOOTSTRAP=1
    for target in $(cd fuzz && cargo fuzz list); do
        echo "--- fuzz $target"
        log="target/fuzz-$target.log"
        mkdir -p target
        if ! (cd fuzz && cargo fuzz run "$target" -- -max_total_time="$fuzz_seconds" -rss_limit_mb=2048) >"$log" 2>&1; then
            tail -n 60 "$log"
            echo "fuzz target $target FAILED (full log: $log)"
            exit 1
        fi
        grep -E '^(#[0-9]+ *DONE|Done [0-9]+ runs)' "$log" | tail -n 1 || tail -n 1 "$log"
    done
fi

step "cargo bench --no-run"
cargo bench --locked --no-run

echo
echo "all checks passed"
