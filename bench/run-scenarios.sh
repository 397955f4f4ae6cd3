#!/bin/sh
# Runs the benchmark scenarios of docs/benchmarks.md: for each run a fresh
# server (fresh data dir), the bench, /health, then the server is stopped.
# Every run's full output lands in $OUT/<scenario>-<n>.txt; the medians of
# the key figures are printed at the end of each scenario.
#
#   bench/run-scenarios.sh [SCENARIO...]     (default: 1 2 3 4 5 6 7)
#   RUNS=3 OUT=/tmp/sb-bench RATE=2000 bench/run-scenarios.sh 3
#
# Needs: a release build (done here), wrk and nginx for 4, a local MariaDB
# (root over the socket) for 7. Loopback only; every run stops by itself.
set -eu
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
OUT=${OUT:-/tmp/sb-bench}
RATE=${RATE:-2000}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
cargo build --release -q -p switchboard-engine -p switchboard-bench
B=$CARGO_TARGET_DIR/release/switchboard-bench
S=$CARGO_TARGET_DIR/release/switchboard
mkdir -p "$OUT"
SECRET=bench-secret
PID=

start_server() { # DIRECTORY_FILE [VAR=value ...]
  dir=$1; shift
  rm -rf "$OUT/data"
  # RATE_LIMITS=off: the open-loop load picks users at random, so some
  # users exceed the per-user limits that protect a real server.
  env SWITCHBOARD_DIRECTORY="$dir" SWITCHBOARD_TOKEN_SECRET=$SECRET \
    SWITCHBOARD_DATA_DIR="$OUT/data" SWITCHBOARD_LOG=warn SWITCHBOARD_RATE_LIMITS=off \
    SWITCHBOARD_CONNECTIONS_PER_ADDRESS_MAX=1000000 "$@" \
    "$S" >"$OUT/server.log" 2>&1 &
  PID=$!
  for _ in $(seq 1 100); do
    curl -sf http://127.0.0.1:8080/ping >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "server did not start:" >&2; cat "$OUT/server.log" >&2; exit 1
}
stop_server() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null || true; PID=; }
trap stop_server EXIT

graph() { # USERS FRIENDS -> file name
  f="$OUT/dir-$1-$2.json"
  [ -f "$f" ] || "$B" graph --users "$1" --friends "$2" --seed 1 --out "$f" 2>/dev/null
  echo "$f"
}

# run_bench SCENARIO N DIRFILE [server env...] -- bench args...
run_bench() {
  name=$1; n=$2; dir=$3; shift 3
  senv=""
  while [ "$1" != "--" ]; do senv="$senv $1"; shift; done
  shift
  # shellcheck disable=SC2086
  start_server "$dir" $senv
  f="$OUT/$name-$n.txt"
  { echo "# $(date -u +%FT%TZ) load $(cat /proc/loadavg)"; echo "# server env:$senv"; echo "# switchboard-bench run $*"; } >"$f"
  "$B" run --secret $SECRET --server-pid "$PID" --out "$OUT" --label "$name-$n" "$@" >>"$f" 2>&1 || echo "(bench exit $?)" >>"$f"
  echo "# health: $(curl -s http://127.0.0.1:8081/health)" >>"$f"
  echo "# load after: $(cat /proc/loadavg)" >>"$f"
  stop_server
  grep -E '^(e2e|req_connect|req_send|server|messages|presence|delivery|errors)' "$f" | sed "s/^/  [$name-$n] /"
}

medians() { # SCENARIO
  python3 - "$OUT" "$1" "$RUNS" <<'EOF'
import json, sys, statistics as st
out, name, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
rows = []
for n in range(1, runs + 1):
    try:
        rows.append(json.load(open(f"{out}/{name}-{n}.summary.json")))
    except OSError:
        pass
if not rows:
    sys.exit(0)
def med(f):
    vals = [f(r) for r in rows]
    vals = [v for v in vals if v is not None]
    return round(st.median(vals), 3) if vals else None
h = lambda k, q: (lambda r: r["histograms"].get(k, {}).get(q))
s = lambda k: (lambda r: (r.get("server") or {}).get(k))
print(f"MEDIAN of {len(rows)} runs of {name}:", json.dumps({
    "messages_per_s": med(lambda r: r["messages_per_s"]),
    "deliveries_per_s": med(lambda r: r["deliveries_per_s"]),
    "requests_per_s": med(lambda r: r["requests_per_s"]),
    "e2e_p50_ms": med(h("e2e", "p50_ms")), "e2e_p99_ms": med(h("e2e", "p99_ms")),
    "e2e_p999_ms": med(h("e2e", "p999_ms")),
    "connect_p50_ms": med(h("req_connect", "p50_ms")), "connect_p99_ms": med(h("req_connect", "p99_ms")),
    "lost": med(lambda r: r["lost"]), "duplicated": med(lambda r: r["duplicated"]),
    "server_cpu_pct_of_core": med(s("cpu_pct_of_core")), "server_rss_mib": med(s("rss_mib")),
    "server_fds_end": med(s("fds_end")),
    "presence_events": med(lambda r: r["presence_events"]),
    "presence_min_needed": med(lambda r: r["presence_min_needed"]),
    "presence_wrong_views": med(lambda r: r["presence_wrong_views"]),
}))
EOF
}

MSG="--users 1000 --friends 8 --tabs 4 --ramp-s 3 --warmup-s 2 --duration-s 10 --drain-s 2 --workers 2 --typing-rate 100 --presence-rate 10"

scenario() {
  case $1 in
  1) # seed scale: 50,000 sessions, 200,000 tabs, 15,000 of them long-polling
    d=$(graph 50000 10)
    for n in $(seq 1 "$RUNS"); do
      run_bench scale "$n" "$d" -- --users 50000 --friends 10 --tabs 4 --live-users 15000 --live-tabs 1 \
        --idle-poll-s 30 --idle-conns 64 --ramp-s 50 --warmup-s 5 --duration-s 20 --drain-s 0 --workers 4
    done; medians scale ;;
  2) # 15,000 concurrent long-polls, no traffic: idle CPU
    d=$(graph 15000 8)
    for n in $(seq 1 "$RUNS"); do
      run_bench conns "$n" "$d" -- --users 15000 --friends 8 --tabs 1 --poll-wait-s 60 \
        --ramp-s 10 --warmup-s 5 --duration-s 20 --drain-s 0 --workers 3
    done; medians conns ;;
  3) # messages: 4 tabs per user, open-loop sends at $RATE/s
    d=$(graph 1000 8)
    for n in $(seq 1 "$RUNS"); do
      # shellcheck disable=SC2086
      run_bench "msg$RATE" "$n" "$d" -- $MSG --rate "$RATE"
    done; medians "msg$RATE" ;;
  4) # /ping vs nginx under the same wrk settings, in one run
    mkdir -p "$OUT/www"; printf 'ok\n' >"$OUT/www/tiny.txt"
    cat >"$OUT/nginx.conf" <<EOF
worker_processes 2;
pid $OUT/nginx.pid;
error_log $OUT/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:8088 reuseport; location / { root $OUT/www; } }
}
EOF
    start_server "$(graph 1000 8)"
    nginx -c "$OUT/nginx.conf"
    sleep 0.5
    for n in $(seq 1 "$RUNS"); do
      for t in nginx ping; do
        if [ $t = nginx ]; then u=http://127.0.0.1:8088/tiny.txt; else u=http://127.0.0.1:8080/ping; fi
        echo "  [wrk-$n] $t $(wrk -t2 -c100 -d10s "$u" | grep -E 'Requests/sec|Latency' | tr -s ' ' | tr '\n' ' ')" | tee -a "$OUT/wrk-$n.txt"
      done
    done
    kill "$(cat "$OUT/nginx.pid")"; stop_server ;;
  5) # scaling: the message mix at an offered rate above one shard's capacity
    d=$(graph 1000 8)
    for shards in 1 2; do
      for n in $(seq 1 "$RUNS"); do
        # shellcheck disable=SC2086
        # OVERCOMMIT: starts on a 1-CPU machine too (the "server env"
        # line of the run's file says so; its numbers then say little).
        run_bench "shards$shards" "$n" "$d" SWITCHBOARD_SHARDS=$shards \
          SWITCHBOARD_SHARDS_OVERCOMMIT=on -- $MSG --rate 4000
      done; medians "shards$shards"
    done ;;
  6) # presence storm: 20,000 users with 50 friends connect within 10 s
    d=$(graph 20000 50)
    for n in $(seq 1 "$RUNS"); do
      run_bench storm "$n" "$d" -- --users 20000 --friends 50 --tabs 1 --live-users 15000 \
        --idle-poll-s 20 --idle-conns 64 --ramp-s 10 --warmup-s 0 --duration-s 5 --drain-s 2 \
        --measure-ramp 1 --workers 4
    done; medians storm ;;
  7) # the message mix on MySQL (local MariaDB), beside the embedded store
    d=$(graph 1000 8)
    mysql -uroot -e "CREATE DATABASE IF NOT EXISTS sbbench; CREATE USER IF NOT EXISTS 'sbbench'@'127.0.0.1' IDENTIFIED BY 'sbbench'; GRANT ALL ON sbbench.* TO 'sbbench'@'127.0.0.1';"
    url=mysql://sbbench:sbbench@127.0.0.1:3306/sbbench
    python3 - "$d" >"$OUT/dir.sql" <<'EOF'
import json, sys
g = json.load(open(sys.argv[1]))
print("DROP TABLE IF EXISTS users, friendships;")
print("CREATE TABLE users (id BIGINT UNSIGNED PRIMARY KEY, name VARCHAR(191) NOT NULL);")
print("CREATE TABLE friendships (user_id BIGINT UNSIGNED NOT NULL, friend_id BIGINT UNSIGNED NOT NULL, PRIMARY KEY (user_id, friend_id));")
print("INSERT INTO users VALUES " + ",".join(f"({u['id']},'{u['name']}')" for u in g["users"]) + ";")
pairs = [p for a, b in g["friendships"] for p in ((a, b), (b, a))]
print("INSERT INTO friendships VALUES " + ",".join(f"({a},{b})" for a, b in pairs) + ";")
EOF
    mysql -uroot sbbench <"$OUT/dir.sql"
    for n in $(seq 1 "$RUNS"); do
      mysql -uroot sbbench -e "SELECT 1" >/dev/null
      SWITCHBOARD_MYSQL_URL=$url "$S" migrate >/dev/null
      # shellcheck disable=SC2086
      run_bench "mysql$RATE" "$n" "$d" SWITCHBOARD_MYSQL_URL=$url -- $MSG --rate "$RATE"
    done; medians "mysql$RATE" ;;
  *) echo "unknown scenario $1" >&2; exit 2 ;;
  esac
}

echo "machine: $(nproc) cores, $(uname -r), load $(cat /proc/loadavg)"
[ $# -gt 0 ] || set -- 1 2 3 4 5 6 7
for s in "$@"; do scenario "$s"; done
