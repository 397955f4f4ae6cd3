#!/bin/sh
# Issue 11's comparison: the `peer` workload (one tab per user with a poll
# and a send connection, friends on the ring lattice, open-loop messages
# to random friends) against Switchboard (JSONP; embedded store, 2 shards,
# release build) and ejabberd (BOSH; Debian's package, bench/ejabberd/),
# back to back and interleaved: every run of every point on both servers,
# the server that goes first alternating from run to run, each on a fresh
# server and a fresh database. Prints each run's key lines, then the
# medians per point and server, and the issue's table.
#
#   bench/peer.sh                                  (all points, RUNS=3)
#   RUNS=1 DURATION=10 POINTS="1000:1000" bench/peer.sh
#   SERVERS=switchboard POINTS="5000:0" bench/peer.sh
#
# POINTS: USERS:RATE pairs, rate 0 = idle (default: the issue's points,
#   "1000:1000 5000:1000 1000:1500 1000:2000 5000:0").
# RUNS (3), DURATION (60 s window), WARMUP (5 s), RAMP (s; default
#   max(10, users/100)), WORKERS (generator processes, 1), SHARDS (2;
#   started with SHARDS_OVERCOMMIT=on, so on fewer cores the shards share
#   them and the numbers say little),
#   SERVERS ("switchboard ejabberd"), OUT (/tmp/sb-peer),
#   SB_PORT/SB_ADMIN_PORT (8080/8081), EJ_PORT (5280; see
#   bench/ejabberd/ejabberd.sh for its other settings).
#
# Needs: ejabberd (apt-get install ejabberd) for the ejabberd runs, run as
# root or as the ejabberd user (bench/ejabberd/ejabberd.sh); python3 for
# the medians. Loopback only; every run stops by itself. Take numbers on a
# quiet machine: the generator and both servers share its cores.
set -eu
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
POINTS=${POINTS:-"1000:1000 5000:1000 1000:1500 1000:2000 5000:0"}
DURATION=${DURATION:-60}
WARMUP=${WARMUP:-5}
WORKERS=${WORKERS:-1}
SHARDS=${SHARDS:-2}
SERVERS=${SERVERS:-"switchboard ejabberd"}
OUT=${OUT:-/tmp/sb-peer}
SB_PORT=${SB_PORT:-8080}
SB_ADMIN_PORT=${SB_ADMIN_PORT:-8081}
export EJ_PORT=${EJ_PORT:-5280}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
cargo build --release -q -p switchboard-engine -p switchboard-bench
B=$CARGO_TARGET_DIR/release/switchboard-bench
S=$CARGO_TARGET_DIR/release/switchboard
export BENCH=$B
EJ=bench/ejabberd/ejabberd.sh
mkdir -p "$OUT"
SECRET=bench-secret
PID=

case " $SERVERS " in *" ejabberd "*)
  command -v ejabberdctl >/dev/null || { echo "ejabberd is not installed (apt-get install ejabberd)" >&2; exit 1; } ;;
esac

sb_start() { # USERS
  dir="$OUT/dir-$1.json"
  [ -f "$dir" ] || "$B" graph --users "$1" --friends 10 --lattice 1 --out "$dir" 2>/dev/null
  rm -rf "$OUT/sb-data"
  env SWITCHBOARD_DIRECTORY="$dir" SWITCHBOARD_TOKEN_SECRET=$SECRET SWITCHBOARD_DATA_DIR="$OUT/sb-data" \
    SWITCHBOARD_SHARDS="$SHARDS" SWITCHBOARD_SHARDS_OVERCOMMIT=on \
    SWITCHBOARD_LOG=warn SWITCHBOARD_RATE_LIMITS=off \
    SWITCHBOARD_CONNECTIONS_PER_ADDRESS_MAX=1000000 \
    SWITCHBOARD_LISTEN=127.0.0.1:$SB_PORT SWITCHBOARD_ADMIN_LISTEN=127.0.0.1:$SB_ADMIN_PORT \
    "$S" >"$OUT/sb-server.log" 2>&1 &
  PID=$!
  # Up to 60 s: a loaded machine has been seen to take 20 s.
  for _ in $(seq 1 600); do
    curl -sf "http://127.0.0.1:$SB_PORT/ping" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "switchboard did not start:" >&2; cat "$OUT/sb-server.log" >&2; exit 1
}

stop_all() {
  [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
  PID=
  case " $SERVERS " in *" ejabberd "*) "$EJ" stop "$OUT/ejabberd" ;; esac
}
trap stop_all EXIT

run() { # SERVER USERS RATE N
  server=$1; users=$2; rate=$3; n=$4
  # ejabberd's logins (7 requests each, presence to and from friends) are
  # slower than Switchboard's connects: 100 a second keeps them ahead.
  ramp=${RAMP:-$(( users / 100 > 10 ? users / 100 : 10 ))}
  label=$server-$users-$rate-$n
  f=$OUT/$label.txt
  if [ "$server" = switchboard ]; then
    sb_start "$users"
    pid=$PID
    args="--proto jsonp --addr 127.0.0.1:$SB_PORT --secret $SECRET"
  else
    pid=$("$EJ" start "$OUT/ejabberd" "$users" | tail -n 1)
    args="--proto bosh --addr 127.0.0.1:$EJ_PORT"
  fi
  { echo "# $(date -u +%FT%TZ) load $(cat /proc/loadavg)"; echo "# $server pid $pid"; } >"$f"
  # shellcheck disable=SC2086
  "$B" peer $args --users "$users" --rate "$rate" --ramp-s "$ramp" --warmup-s "$WARMUP" \
    --duration-s "$DURATION" --workers "$WORKERS" --server-pid "$pid" --out "$OUT" --label "$label" \
    >>"$f" 2>&1 || echo "(bench exit $?)" >>"$f"
  echo "# load after: $(cat /proc/loadavg)" >>"$f"
  if [ "$server" = switchboard ]; then
    kill "$PID"; wait "$PID" 2>/dev/null || true; PID=
  else
    "$EJ" stop "$OUT/ejabberd"
  fi
  grep -E '^(e2e|messages|server|generator|logins|delivery|errors|!!!)' "$f" | sed "s/^/  [$label] /"
}

echo "machine: $(nproc) cores, $(uname -r), load $(cat /proc/loadavg)"
case " $SERVERS " in *" ejabberd "*)
  echo "ejabberd: $(dpkg-query -W -f '${Version}' ejabberd 2>/dev/null || echo '?')"
  for u in $(for p in $POINTS; do echo "${p%%:*}"; done | sort -nu); do "$EJ" users "$OUT/ejabberd" "$u"; done ;;
esac
for n in $(seq 1 "$RUNS"); do
  for p in $POINTS; do
    order=$SERVERS
    # The server that goes first alternates from run to run.
    [ $((n % 2)) = 0 ] && order=$(echo "$SERVERS" | awk '{ for (i = NF; i > 0; i--) printf "%s ", $i }')
    for server in $order; do
      run "$server" "${p%%:*}" "${p##*:}" "$n"
    done
  done
done

python3 - "$OUT" "$RUNS" "$POINTS" "$SERVERS" <<'EOF'
import json, sys, statistics as st
out, runs, points, servers = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(), sys.argv[4].split()
def load(server, users, rate):
    rows = []
    for n in range(1, runs + 1):
        try:
            rows.append(json.load(open(f"{out}/{server}-{users}-{rate}-{n}.summary.json")))
        except OSError:
            pass
    return rows
def med(rows, f):
    vals = []
    for r in rows:
        try:
            v = f(r)
        except (KeyError, TypeError):
            v = None
        if v is not None:
            vals.append(v)
    return st.median(vals) if vals else None
def fmt(v, d=2):
    return "-" if v is None else f"{v:.{d}f}"
cols = ["point", "server", "runs", "msgs/s", "srv ms CPU/msg", "gen ms CPU/msg", "srv µs/req", "gen µs/req",
        "p50 ms", "p99 ms", "p99.9 ms", "srv % core", "RSS MiB", "KiB/user", "lost+dup"]
print()
print(f"MEDIANS of {runs} runs ({out})")
print("| " + " | ".join(cols) + " |")
print("|" + " --- |" * len(cols))
table = {}
for p in points:
    users, rate = p.split(":")
    for s in servers:
        rows = load(s, users, rate)
        e2e = lambda q: (lambda r: r["histograms"]["e2e"][q])
        m = {
            "msgs": med(rows, lambda r: r["messages_per_s"]),
            "srv_msg": med(rows, lambda r: r["server"]["ms_cpu_per_msg"]),
            "gen_msg": med(rows, lambda r: r["generator"]["ms_cpu_per_msg"]),
            "srv_req": med(rows, lambda r: r["server"]["us_cpu_per_request"]),
            "gen_req": med(rows, lambda r: r["generator"]["us_cpu_per_request"]),
            "p50": med(rows, e2e("p50_ms")), "p99": med(rows, e2e("p99_ms")), "p999": med(rows, e2e("p999_ms")),
            "pct": med(rows, lambda r: r["server"]["cpu_pct_of_core"]),
            "rss": med(rows, lambda r: r["server"]["rss_mib"]),
            "kib": med(rows, lambda r: r["server"]["rss_kib_per_user"]),
            "bad": sum(r["lost"] + r["duplicated"] for r in rows),
        }
        table[(p, s)] = m
        label = f"{users} users, idle" if rate == "0" else f"{users} users, {rate} msg/s"
        print("| " + " | ".join([label, s, str(len(rows)), fmt(m["msgs"], 0), fmt(m["srv_msg"]), fmt(m["gen_msg"]),
                                fmt(m["srv_req"], 0), fmt(m["gen_req"], 0), fmt(m["p50"]), fmt(m["p99"]),
                                fmt(m["p999"]), fmt(m["pct"], 1), fmt(m["rss"], 0), fmt(m["kib"], 1),
                                str(m["bad"])]) + " |")
if "ejabberd" in servers and "switchboard" in servers:
    print()
    print("| point | ejabberd ms CPU/msg | Switchboard ms CPU/msg | ejabberd p99 | Switchboard p99 |")
    print("| --- | --- | --- | --- | --- |")
    for p in points:
        users, rate = p.split(":")
        e, s = table[(p, "ejabberd")], table[(p, "switchboard")]
        if rate == "0":
            print(f"| {users} users idle (% of a core) | {fmt(e['pct'], 1)} % | {fmt(s['pct'], 1)} % | | |")
        else:
            print(f"| {users} users, {rate} msg/s | {fmt(e['srv_msg'])} | {fmt(s['srv_msg'])} | "
                  f"{fmt(e['p99'], 1)} ms | {fmt(s['p99'], 1)} ms |")
EOF
