#!/bin/sh
# The cost of observability: scenario 3 (messages, 1000 users x 4 tabs,
# open-loop sends at $RATE/s, typing and presence) against one server
# build, runs interleaved between two modes so both see the same machine:
#
#   off  SWITCHBOARD_LOG=warn, nobody reads /metrics, no trace;
#   on   SWITCHBOARD_LOG=info, /metrics scraped every $SCRAPE_S seconds
#        for the whole run, and per-user traces (level=debug) on users
#        $TRACED (each of them sends, receives and polls in the bench).
#
#   RUNS=5 RATE=2000 bench/observe.sh [PATH/TO/switchboard]
#
# Full outputs land in $OUT/observe-<mode>-<n>.txt, medians are printed
# at the end. Loopback only; every run stops by itself.
set -eu
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
RATE=${RATE:-2000}
OUT=${OUT:-/tmp/sb-observe}
SCRAPE_S=${SCRAPE_S:-1}
TRACED=${TRACED:-1 2 3 4}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
cargo build --release -q -p switchboard-bench -p switchboard-engine
B=$CARGO_TARGET_DIR/release/switchboard-bench
S=${1:-$CARGO_TARGET_DIR/release/switchboard}
ADMIN=127.0.0.1:8081
mkdir -p "$OUT"
D=$OUT/dir-1000-8.json
[ -f "$D" ] || "$B" graph --users 1000 --friends 8 --seed 1 --out "$D" 2>/dev/null
PID=
SCRAPER=
stop_all() {
  [ -n "$SCRAPER" ] && kill "$SCRAPER" 2>/dev/null
  [ -n "$PID" ] && kill "$PID" 2>/dev/null
  wait 2>/dev/null || true
  PID=; SCRAPER=
}
trap stop_all EXIT

for n in $(seq 1 "$RUNS"); do
  for mode in off on; do
    rm -rf "$OUT/data"
    log=warn
    [ "$mode" = on ] && log=info
    env SWITCHBOARD_DIRECTORY="$D" SWITCHBOARD_TOKEN_SECRET=bench-secret SWITCHBOARD_DATA_DIR="$OUT/data" \
      SWITCHBOARD_LOG=$log SWITCHBOARD_RATE_LIMITS=off SWITCHBOARD_CONNECTIONS_PER_ADDRESS_MAX=1000000 \
      "$S" >"$OUT/server-$mode-$n.log" 2>&1 &
    PID=$!
    for _ in $(seq 1 100); do
      curl -sf http://127.0.0.1:8080/ping >/dev/null 2>&1 && break
      sleep 0.1
    done
    f=$OUT/observe-$mode-$n.txt
    echo "# $(date -u +%FT%TZ) mode $mode load $(cat /proc/loadavg)" >"$f"
    if [ "$mode" = on ]; then
      for u in $TRACED; do
        echo "# trace user $u: $(curl -s -X POST -H "Host: $ADMIN" "http://$ADMIN/trace?user=$u&level=debug")" >>"$f"
      done
      (while :; do curl -s -H "Host: $ADMIN" "http://$ADMIN/metrics" >"$OUT/metrics-last.txt"; sleep "$SCRAPE_S"; done) &
      SCRAPER=$!
    fi
    "$B" run --users 1000 --friends 8 --tabs 4 --ramp-s 3 --warmup-s 2 --duration-s 10 --drain-s 2 \
      --workers 2 --typing-rate 100 --presence-rate 10 --rate "$RATE" --secret bench-secret \
      --server-pid "$PID" --out "$OUT" --label "observe-$mode-$n" >>"$f" 2>&1 || echo "(bench exit $?)" >>"$f"
    if [ "$mode" = on ]; then
      for u in $TRACED; do
        echo "# trace user $u lines: $(curl -s -H "Host: $ADMIN" "http://$ADMIN/trace?user=$u" | wc -l)" >>"$f"
      done
      echo "# metrics lines at the last scrape: $(wc -l <"$OUT/metrics-last.txt")" >>"$f"
    fi
    echo "# load after $(cat /proc/loadavg)" >>"$f"
    stop_all
    echo "== $mode run $n"
    grep -E '^(e2e|req_send|req_poll|server|errors|# trace|# metrics)' "$f" | sed 's/^/   /'
  done
done

python3 - "$OUT" "$RUNS" <<'EOF'
import json, sys, statistics as st
out, runs = sys.argv[1], int(sys.argv[2])
for mode in ("off", "on"):
    rows = []
    for n in range(1, runs + 1):
        try:
            rows.append(json.load(open(f"{out}/observe-{mode}-{n}.summary.json")))
        except OSError:
            pass
    if not rows:
        continue
    def med(f):
        vals = [v for v in (f(r) for r in rows) if v is not None]
        return round(st.median(vals), 3) if vals else None
    h = lambda k, q: (lambda r: r["histograms"].get(k, {}).get(q))
    s = lambda k: (lambda r: (r.get("server") or {}).get(k))
    print(f"MEDIAN of {len(rows)} runs, observability {mode}:", json.dumps({
        "requests_per_s": med(lambda r: r["requests_per_s"]),
        "messages_per_s": med(lambda r: r["messages_per_s"]),
        "req_send_p50_ms": med(h("req_send", "p50_ms")), "req_send_p99_ms": med(h("req_send", "p99_ms")),
        "e2e_p50_ms": med(h("e2e", "p50_ms")), "e2e_p99_ms": med(h("e2e", "p99_ms")),
        "server_cpu_pct_of_core": med(s("cpu_pct_of_core")), "server_rss_mib": med(s("rss_mib")),
        "lost": med(lambda r: r["lost"]),
    }))
EOF
