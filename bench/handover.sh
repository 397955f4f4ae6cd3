#!/bin/sh
# Issue 12's hand-over under load: `switchboard-bench handover` RUNS times,
# each on a fresh data dir. The bench starts the server itself (release
# build, embedded store, the environment below), attaches USERS x TABS
# tabs, every one long-polling on its own connection, sends RATE msg/s
# open loop to random friends, and BEFORE s into the measured phase starts
# `switchboard serve --takeover` with the same settings. Every run's
# output lands in $OUT/handover-N.txt (and N.summary.json, .hgrm files,
# N.incidents.txt, N.timeline.csv, the servers' logs); the medians of the
# key figures are printed at the end.
#
#   bench/handover.sh
#   RUNS=1 USERS=500 RATE=100 bench/handover.sh        (a quick look)
#
# Settings: RUNS (3), USERS (2500), TABS (4), FRIENDS (8), RATE (300),
# WORKERS (2), RAMP (20 s), WARMUP (5), BEFORE (20: the steady window
# before T0), AFTER (5: the during window ends this long after the old
# process's exit), DURATION (45: the measured phase, BEFORE + the
# hand-over + AFTER + room), DRAIN (3), PORT (28080), ADMIN_PORT (28081),
# OUT (/tmp/sb-handover), SERVER (the switchboard binary, absolute path;
# default: this tree's release build); SWITCHBOARD_* in the environment
# reach both servers (SHARDS, say). Loopback only; every run stops by itself. Needs
# python3 for the medians.
set -eu
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
USERS=${USERS:-2500}
TABS=${TABS:-4}
FRIENDS=${FRIENDS:-8}
RATE=${RATE:-300}
WORKERS=${WORKERS:-2}
RAMP=${RAMP:-20}
WARMUP=${WARMUP:-5}
BEFORE=${BEFORE:-20}
AFTER=${AFTER:-5}
DURATION=${DURATION:-45}
DRAIN=${DRAIN:-3}
PORT=${PORT:-28080}
ADMIN_PORT=${ADMIN_PORT:-28081}
OUT=${OUT:-/tmp/sb-handover}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
cargo build --release -q -p switchboard-engine -p switchboard-bench
B=$CARGO_TARGET_DIR/release/switchboard-bench
S=${SERVER:-$(cd "$(dirname "$CARGO_TARGET_DIR/release/switchboard")" && pwd)/switchboard}
mkdir -p "$OUT"
SECRET=bench-secret
DIR=$OUT/dir-$USERS-$FRIENDS.json
[ -f "$DIR" ] || "$B" graph --users "$USERS" --friends "$FRIENDS" --seed 1 --out "$DIR" 2>/dev/null

echo "machine: $(nproc) cores, $(uname -r), load $(cat /proc/loadavg), open files $(ulimit -n), somaxconn $(cat /proc/sys/net/core/somaxconn)"
for n in $(seq 1 "$RUNS"); do
  rm -rf "$OUT/data"
  f=$OUT/handover-$n.txt
  set -- handover --server "$S" --addr "127.0.0.1:$PORT" --users "$USERS" --friends "$FRIENDS" \
    --tabs "$TABS" --rate "$RATE" --ramp-s "$RAMP" --warmup-s "$WARMUP" --duration-s "$DURATION" \
    --before-s "$BEFORE" --after-exit-s "$AFTER" --drain-s "$DRAIN" --workers "$WORKERS" \
    --secret "$SECRET" --out "$OUT" --label "$n"
  { echo "# $(date -u +%FT%TZ) load $(cat /proc/loadavg)"; echo "# switchboard-bench $*"; } >"$f"
  # RATE_LIMITS=off: the open-loop load picks senders at random, so some
  # go over the per-user limits; every bench connection comes from
  # 127.0.0.1, so the per-address cap is lifted.
  env SWITCHBOARD_DIRECTORY="$DIR" SWITCHBOARD_TOKEN_SECRET=$SECRET SWITCHBOARD_DATA_DIR="$OUT/data" \
    SWITCHBOARD_RATE_LIMITS=off SWITCHBOARD_CONNECTIONS_PER_ADDRESS_MAX=1000000 \
    SWITCHBOARD_LISTEN="127.0.0.1:$PORT" SWITCHBOARD_ADMIN_LISTEN="127.0.0.1:$ADMIN_PORT" \
    "$B" "$@" >>"$f" 2>&1 || echo "(bench exit $?)" >>"$f"
  echo "# load after: $(cat /proc/loadavg)" >>"$f"
  grep -E '^(  =>|e2e|send|  T0|clients|  retries|delivery|kernel|CPU|!!!|\(bench)' "$f" | sed "s/^/  [$n] /"
done

python3 - "$OUT" "$RUNS" <<'EOF'
import json, sys, statistics as st
out, runs = sys.argv[1], int(sys.argv[2])
rows = []
for n in range(1, runs + 1):
    try:
        rows.append(json.load(open(f"{out}/{n}.summary.json")))
    except OSError:
        pass
if not rows:
    sys.exit(0)
def med(f):
    vals = []
    for r in rows:
        try:
            v = f(r)
        except (KeyError, TypeError):
            v = None
        if v is not None:
            vals.append(v)
    return round(st.median(vals), 3) if vals else None
lat = lambda w, q: (lambda r: r["latency"][w][q])
net = lambda w, k: (lambda r: r[f"netstat_{w}"][k])
m = {
    "runs": len(rows), "clean_runs": sum(1 for r in rows if r["clean"]),
    "not_accepting_ms": med(lambda r: r["not_accepting_ms"]),
    "after_asking_ms": med(lambda r: r["after_asking_ms"]),
    "start_to_old_exit_ms": med(lambda r: r["start_to_old_exit_ms"]),
    "during_s": med(lambda r: r["during_s"]),
}
for w in ("before", "during", "after"):
    for q in ("p50_ms", "p99_ms", "p999_ms", "max_ms"):
        m[f"e2e_{w}_{q}"] = med(lat(f"e2e_{w}", q))
    m[f"send_{w}_p99_ms"] = med(lat(f"send_{w}", "p99_ms"))
    m[f"e2e_{w}_count"] = med(lat(f"e2e_{w}", "count"))
for k in ("failed_requests", "unknown_session", "poll_resets", "tab_reconnects", "retries",
          "retries_poll", "conn_close_answers", "lost", "duplicated", "old_cpu_pct_before", "old_cpu_s_handover",
          "new_cpu_s_to_old_exit", "generator_cpu_pct_before", "generator_cpu_pct_during"):
    m[k] = med(lambda r: r[k])
for k in ("ListenOverflows", "TCPSynRetrans"):
    m[f"{k}_during"] = med(net("during", k))
print(f"MEDIANS of {len(rows)} runs ({out}): " + json.dumps(m))
print()
print("| run | no accept ms | ready after asking ms | start to old exit ms | e2e p99 before | e2e p99 during | e2e max during | ListenOverflows | failed | retries | lost+dup |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for r in rows:
    print(f"| {r['label']} | {r['not_accepting_ms']} | {r['after_asking_ms']} | {r['start_to_old_exit_ms']} | "
          f"{r['latency']['e2e_before']['p99_ms']:.1f} | {r['latency']['e2e_during']['p99_ms']:.1f} | "
          f"{r['latency']['e2e_during']['max_ms']:.1f} | {r['netstat_during'].get('ListenOverflows')} | "
          f"{r['failed_requests']} | {r['retries']} | {r['lost'] + r['duplicated']} |")
EOF
