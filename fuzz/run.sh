#!/usr/bin/env bash
# Build the fuzz targets, replay the committed seed corpus, then fuzz each target for a bounded
# time, all inside a throwaway user+network namespace (unshare --user --map-root-user --net):
# the targets open real sockets to whatever the fuzzed frames ask for, and there only lo
# exists, so nothing can leave the machine. Exits non-zero if any target crashes, leaks,
# times out or fails to build.
#
# Usage: fuzz/run.sh [TARGET...]            (default: every target)
# Environment:
#   FUZZ_SECONDS   fuzzing time per target, after the replay (default 20; 0: replay only)
#   FUZZ_RSS_MB    libFuzzer's -rss_limit_mb (default 2048)
#   FUZZ_TIMEOUT   libFuzzer's -timeout per input, seconds (default 20)
#   FUZZ_ARGS      extra libFuzzer arguments (e.g. "-jobs=2 -workers=2")
#
# New inputs go to fuzz/target/corpus/TARGET (not committed); crashes to fuzz/artifacts/TARGET/.
# Requires cargo-fuzz (cargo install cargo-fuzz --locked) and a C++ compiler (libFuzzer).
set -euo pipefail
fuzz_dir=$(cd "$(dirname "$0")" && pwd)
cd "$fuzz_dir"
all_targets=(frame vnet stateful services bp_request api)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all_targets[@]}")
bin_dir=$fuzz_dir/target/x86_64-unknown-linux-gnu/release

if [ "${USERNET_FUZZ_NAMESPACE:-}" != 1 ]; then
    if ! cargo fuzz --version >/dev/null 2>&1; then
        echo "cargo-fuzz is missing: cargo install cargo-fuzz --locked" >&2
        exit 1
    fi
    # Outside the namespace: cargo may need the registry. Release build with debug assertions
    # and overflow checks; no sanitizer, so the stable toolchain builds it.
    start=$(date +%s)
    one=()
    [ ${#targets[@]} -eq 1 ] && one=("${targets[0]}")
    cargo fuzz build --sanitizer none --debug-assertions "${one[@]}" 2>&1 |
        grep -vE '^\s+(Compiling|Downloaded|Downloading) ' || true
    for t in "${targets[@]}"; do
        [ -x "$bin_dir/$t" ] || { echo "fuzz target $t did not build" >&2; exit 1; }
    done
    echo "built ${targets[*]} in $(($(date +%s) - start)) s"
    export USERNET_FUZZ_NAMESPACE=1
    exec unshare --user --map-root-user --net -- "$fuzz_dir/run.sh" "${targets[@]}"
fi

# Inside the namespace. The targets check for themselves that lo is the only interface.
ip link set lo up 2>/dev/null || true
# The API targets' sockets live in temporary directories: one for this run, removed after.
TMPDIR=$(mktemp -d "${TMPDIR:-/tmp}/usernet-fuzz.XXXXXX")
export TMPDIR
trap 'rm -rf "$TMPDIR"' EXIT
seconds=${FUZZ_SECONDS:-20}
failed=()
for t in "${targets[@]}"; do
    seeds=$fuzz_dir/corpus/$t
    work=$fuzz_dir/target/corpus/$t
    artifacts=$fuzz_dir/artifacts/$t
    mkdir -p "$seeds" "$work" "$artifacts"
    common=(-rss_limit_mb="${FUZZ_RSS_MB:-2048}" -timeout="${FUZZ_TIMEOUT:-20}"
        -artifact_prefix="$artifacts/" -print_final_stats=1)
    echo "== $t: replaying $(find "$seeds" -type f | wc -l) seeds"
    log=$fuzz_dir/target/$t.log
    if ! "$bin_dir/$t" "${common[@]}" -runs=0 "$seeds" >"$log" 2>&1; then
        tail -n 40 "$log"
        failed+=("$t (seed replay)")
        continue
    fi
    grep -E '^(#[0-9]+[[:space:]]+DONE|stat::number_of_executed_units)' "$log" || true
    [ "$seconds" -gt 0 ] || continue
    echo "== $t: fuzzing for $seconds s"
    # shellcheck disable=SC2086
    if ! "$bin_dir/$t" "${common[@]}" -max_total_time="$seconds" ${FUZZ_ARGS:-} \
        "$work" "$seeds" >"$log" 2>&1; then
        tail -n 60 "$log"
        failed+=("$t")
        continue
    fi
    grep -E '^(#[0-9]+[[:space:]]+DONE|stat::number_of_executed_units|stat::peak_rss_mb)' "$log" || true
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzzing FAILED: ${failed[*]} (reproduce: fuzz/run.sh TARGET after copying the artifact into fuzz/corpus/TARGET, or see fuzz/README.md)" >&2
    exit 1
fi
echo "fuzzing passed: ${targets[*]}"
