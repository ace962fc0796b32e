#!/usr/bin/env bash
# Runs every keygate fuzz target for a fixed time each, one after another.
#
#   fuzz/run.sh [SECONDS_PER_TARGET]       (default 60)
#
# Environment:
#   FUZZ_TARGETS   space-separated subset (default: all targets below)
#   FUZZ_SANITIZER address (default) or none (faster, finds panics only)
#   FUZZ_JOBS      parallel libFuzzer workers per target (default 1)
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`). Only a stable
# toolchain is required: RUSTC_BOOTSTRAP=1 lets stable rustc accept the -Z
# flags cargo-fuzz passes (-Zsanitizer, sanitizer-coverage). Inputs in
# fuzz/regressions/<target>/ are replayed at the start of each run, new corpus
# entries go to fuzz/corpus/<target>/ (git-ignored except the seed-* files),
# crashes to fuzz/artifacts/<target>/ and logs to fuzz/artifacts/logs/.
# Exits non-zero if any target crashed, timed out, ran out of memory or failed
# to build.
set -uo pipefail

seconds="${1:-60}"
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -lt 1 ]; then
    echo "usage: $0 [SECONDS_PER_TARGET]" >&2
    exit 2
fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here" || exit 2
targets="${FUZZ_TARGETS:-vault_open vault_document sse_tap client_key config head_guard usage_scan json_skim content_coding}"
sanitizer="${FUZZ_SANITIZER:-address}"
jobs="${FUZZ_JOBS:-1}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is not installed: cargo install cargo-fuzz --locked" >&2
    exit 2
fi
export RUSTC_BOOTSTRAP=1
# Vault targets write their input to a private temp dir; keep it in one place.
KEYGATE_FUZZ_TMP="$(mktemp -d)"
export KEYGATE_FUZZ_TMP
trap 'rm -rf "$KEYGATE_FUZZ_TMP"' EXIT

# -O: optimised; -a: debug assertions and overflow checks on, so an arithmetic
# overflow is a crash here even though release builds would wrap silently.
build=(-O -a --sanitizer "$sanitizer")
# One target named: build just it; several: build all (one cargo invocation).
targets_arg=""
if [ "$(wc -w <<<"$targets")" -eq 1 ]; then
    targets_arg="$targets"
fi
echo "== building fuzz targets (sanitizer: $sanitizer)"
# shellcheck disable=SC2086
if ! nice cargo fuzz build "${build[@]}" $targets_arg; then
    echo "FAILED: build" >&2
    exit 1
fi

bin_dir="target/$(rustc -vV | sed -n 's/^host: //p')/release"
mkdir -p artifacts/logs
failed=()
for target in $targets; do
    corpus="corpus/$target"
    mkdir -p "$corpus"
    dirs=("$corpus")
    if [ -d "regressions/$target" ] && [ -n "$(ls -A "regressions/$target")" ]; then
        dirs+=("regressions/$target")
    fi
    flags=(
        "-max_total_time=$seconds"
        -timeout=10
        -rss_limit_mb=2048
        -print_final_stats=1
    )
    if [ -f "dicts/$target.dict" ]; then
        flags+=("-dict=dicts/$target.dict")
    fi
    if [ "$jobs" -gt 1 ]; then
        flags+=("-fork=$jobs")
    fi
    log="artifacts/logs/$target.log"
    echo "== $target: ${seconds}s (log: fuzz/$log)"
    mkdir -p "artifacts/$target"
    # The binary cargo fuzz built above, run directly (as `cargo fuzz run` does)
    # so every target tests the same build even while src/ is being edited.
    nice "$bin_dir/$target" "-artifact_prefix=artifacts/$target/" "${flags[@]}" "${dirs[@]}" >"$log" 2>&1
    status=$?
    grep -E '^(#[0-9]+ +DONE|Done [0-9]+ runs|stat::number_of_executed_units|stat::average_exec_per_sec|stat::peak_rss_mb)' "$log" || true
    if [ "$status" -ne 0 ]; then
        echo "FAILED: $target (exit $status); see fuzz/$log and fuzz/artifacts/$target/" >&2
        grep -E -m1 -A3 "panicked at|ERROR: libFuzzer|ERROR: AddressSanitizer" "$log" >&2 || true
        failed+=("$target")
    fi
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzzing found problems in: ${failed[*]}" >&2
    exit 1
fi
echo "all targets ran ${seconds}s without a crash"
