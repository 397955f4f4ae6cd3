#!/bin/sh
# A local cluster (issue 15, in progress): NODES Switchboard nodes on
# loopback, all on one MySQL database and one NATS with JetStream, for
# demos, manual tests and the cluster benchmarks to come. It makes the
# database (dropped and created again: it is the script's own) and its
# schema and demo directory (`switchboard migrate`, `seed-demo`), a
# placement of its own cluster over the nodes (`switchboard cluster
# init`), starts the nodes, prints `switchboard cluster status`, and
# keeps them running until Ctrl-C (or SIGTERM), which stops them and
# deletes the cluster's buckets (`switchboard cluster forget`).
#
# What works today: each node serves its own clients and heartbeats, and
# the nodes share the placement map. What does not yet: nodes do not route
# to each other (docs/operations.md, "Cluster mode").
#
#   bench/cluster.sh                       (3 nodes: n1 on :8181, n2 on :8182, n3 on :8183)
#   NODES=2 USERS=1000 bench/cluster.sh
#
# Settings: NODES (3), PORT (8181: node i listens on PORT+i-1 and its admin
# on PORT+100+i-1), MYSQL (mysql://root@127.0.0.1:3306, a server URL
# without a database), DB (sb_local_cluster), NATS (nats://127.0.0.1:4222),
# CLUSTER (local), USERS/FRIENDS (the demo directory: 200 users with 10
# friends each), OUT (/tmp/sb-cluster: the nodes' data folders and logs),
# SWITCHBOARD_* in the environment reach every node (SHARDS, say).
set -eu
cd "$(dirname "$0")/.."
NODES=${NODES:-3}
PORT=${PORT:-8181}
MYSQL=${MYSQL:-mysql://root@127.0.0.1:3306}
DB=${DB:-sb_local_cluster}
NATS=${NATS:-nats://127.0.0.1:4222}
CLUSTER=${CLUSTER:-local}
USERS=${USERS:-200}
FRIENDS=${FRIENDS:-10}
OUT=${OUT:-/tmp/sb-cluster}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
cargo build --release -q -p switchboard-engine
S=$CARGO_TARGET_DIR/release/switchboard
URL="$MYSQL/$DB"
mkdir -p "$OUT"

host=${MYSQL#mysql://}
host=${host#*@}
mysql --host="${host%:*}" --port="${host#*:}" --user=root \
  -e "DROP DATABASE IF EXISTS $DB; CREATE DATABASE $DB CHARACTER SET utf8mb4"
"$S" migrate --mysql-url "$URL" --log warn
"$S" seed-demo --users "$USERS" --friends "$FRIENDS" --reset --mysql-url "$URL" --log warn

names=
for i in $(seq 1 "$NODES"); do names="$names n$i"; done
# A cluster of the script's own: a placement left by an earlier run would
# be refused by `init`, so the name carries the time.
CLUSTER="${CLUSTER}_$(date +%s)"
# shellcheck disable=SC2086
"$S" cluster init $names --nats-url "$NATS" --cluster "$CLUSTER"

PIDS=
stop() {
  for p in $PIDS; do kill "$p" 2>/dev/null || true; done
  for p in $PIDS; do wait "$p" 2>/dev/null || true; done
  PIDS=
  # The cluster's buckets go with it (refused if a node still heartbeats).
  "$S" cluster forget --nats-url "$NATS" --cluster "$CLUSTER" >/dev/null || true
}
trap stop EXIT INT TERM
SECRET=local-cluster-secret
for i in $(seq 1 "$NODES"); do
  rm -rf "$OUT/n$i"
  env SWITCHBOARD_MYSQL_URL="$URL" SWITCHBOARD_NATS_URL="$NATS" SWITCHBOARD_NODE_ID="n$i" \
    SWITCHBOARD_CLUSTER="$CLUSTER" SWITCHBOARD_DATA_DIR="$OUT/n$i" \
    SWITCHBOARD_TOKEN_SECRET=$SECRET \
    SWITCHBOARD_LISTEN="127.0.0.1:$((PORT + i - 1))" \
    SWITCHBOARD_ADMIN_LISTEN="127.0.0.1:$((PORT + 100 + i - 1))" \
    "$S" >"$OUT/n$i.log" 2>&1 &
  PIDS="$PIDS $!"
done
for i in $(seq 1 "$NODES"); do
  ok=
  for _ in $(seq 1 300); do
    if curl -sf "http://127.0.0.1:$((PORT + i - 1))/ping" >/dev/null 2>&1; then ok=1; break; fi
    sleep 0.1
  done
  [ -n "$ok" ] || { echo "node n$i did not start:" >&2; cat "$OUT/n$i.log" >&2; exit 1; }
done
"$S" cluster status --nats-url "$NATS" --cluster "$CLUSTER"
echo "nodes: $(for i in $(seq 1 "$NODES"); do printf 'http://127.0.0.1:%s ' $((PORT + i - 1)); done)"
echo "token for user 1: SWITCHBOARD_TOKEN_SECRET=$SECRET $S token 1"
echo "logs in $OUT; Ctrl-C stops the nodes"
for p in $PIDS; do wait "$p" || true; done
