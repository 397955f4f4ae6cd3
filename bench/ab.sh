#!/bin/sh
# Compares server builds on scenario 3 (messages, 4 tabs per user,
# open-loop sends): each run starts a fresh server (fresh data dir) of each
# build in turn, so the runs interleave and every build sees the same
# machine load. Full outputs land in $OUT/ab-<label>-<n>.txt.
#
#   bench/ab.sh LABEL=PATH/TO/switchboard [LABEL=PATH ...]
#   RUNS=3 RATE=1000 OUT=/tmp/sb-ab bench/ab.sh old=/tmp/old/switchboard new=target/release/switchboard
#
# Build an older version with `git worktree add /tmp/old COMMIT` and
# `cargo build --release -p switchboard-engine` there. Settings a build
# does not know are ignored by it (environment variables), so every build
# gets the same environment. Loopback only; every run stops by itself.
set -eu
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
RATE=${RATE:-1000}
OUT=${OUT:-/tmp/sb-ab}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
cargo build --release -q -p switchboard-bench
B=$CARGO_TARGET_DIR/release/switchboard-bench
mkdir -p "$OUT"
D=$OUT/dir-1000-8.json
[ -f "$D" ] || "$B" graph --users 1000 --friends 8 --seed 1 --out "$D" 2>/dev/null
for n in $(seq 1 "$RUNS"); do
  for build in "$@"; do
    label=${build%%=*}
    server=${build#*=}
    rm -rf "$OUT/data"
    env SWITCHBOARD_DIRECTORY="$D" SWITCHBOARD_TOKEN_SECRET=bench-secret SWITCHBOARD_DATA_DIR="$OUT/data" \
      SWITCHBOARD_LOG=warn SWITCHBOARD_RATE_LIMITS=off SWITCHBOARD_CONNECTIONS_PER_ADDRESS_MAX=1000000 \
      "$server" >"$OUT/server-$label-$n.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 100); do
      curl -sf http://127.0.0.1:8080/ping >/dev/null 2>&1 && break
      sleep 0.1
    done
    f=$OUT/ab-$label-$n.txt
    echo "# load $(cat /proc/loadavg)" >"$f"
    "$B" run --users 1000 --friends 8 --tabs 4 --ramp-s 3 --warmup-s 2 --duration-s 10 --drain-s 2 \
      --workers 2 --typing-rate 100 --presence-rate 10 --rate "$RATE" --secret bench-secret \
      --server-pid "$pid" --out "$OUT" --label "$label-$n" >>"$f" 2>&1 || echo "(bench exit $?)" >>"$f"
    echo "# load after $(cat /proc/loadavg)" >>"$f"
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    echo "== $label run $n ($(head -1 "$f" | cut -c3-))"
    grep -E '^(e2e|server|errors)' "$f" | sed 's/^/   /'
  done
done
