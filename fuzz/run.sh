#!/bin/sh
# Runs every fuzz target (or those named) for SECONDS each (default 60),
# one at a time and niced (the build machine is shared). Each target
# starts from its committed seeds (fuzz/corpus/<target>, read only) and
# grows its corpus in fuzz/work/<target> (not committed); crashes land in
# fuzz/artifacts/<target>/. The last lines of each log are libFuzzer's
# final stats (executions, cov, ft, corpus size).
#
#   fuzz/run.sh [SECONDS] [TARGET...]      e.g. fuzz/run.sh 600 head
set -eu
cd "$(dirname "$0")/.."
seconds=${1:-60}
[ $# -gt 0 ] && shift
targets=${*:-head query callback call}
mkdir -p fuzz/work
status=0
for target in $targets; do
    mkdir -p "fuzz/work/$target"
    log="fuzz/work/$target.log"
    echo "== $target: ${seconds}s, log in $log"
    # -timeout: an input that takes over 10 s is a hang (a quadratic
    # loop), reported like a crash.
    if ! nice -n 15 cargo +nightly fuzz run "$target" "fuzz/work/$target" "fuzz/corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
        echo "!! $target failed: see $log and fuzz/artifacts/$target/"
        status=1
    fi
    grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1 || true
    grep -E '^stat::(number_of_executed_units|peak_rss_mb)' "$log" || true
done
exit $status
