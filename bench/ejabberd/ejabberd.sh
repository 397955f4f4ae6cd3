#!/bin/sh
# Runs Debian's ejabberd (apt-get install ejabberd) for
# `switchboard-bench peer --proto bosh`, with everything private under DIR:
# config, mnesia spool, logs, pid file; node EJ_NODE, BOSH on
# 127.0.0.1:EJ_PORT/bosh. No systemd: `ejabberdctl start` (detached) with
# --config-dir/--spool/--logs/--ctl-config of our own. Run as root (the
# node then runs as the `ejabberd` user, by setpriv) or as the `ejabberd`
# user.
#
#   bench/ejabberd/ejabberd.sh users DIR U     users 1..U and their lattice rosters,
#                                              imported once into DIR/spool-U
#   bench/ejabberd/ejabberd.sh start DIR U     a fresh copy of DIR/spool-U, start,
#                                              wait; prints the beam.smp pid
#   bench/ejabberd/ejabberd.sh stop DIR        stop and wait
#   bench/ejabberd/ejabberd.sh pid DIR         the node's beam.smp pid
#   bench/ejabberd/ejabberd.sh ctl DIR ARGS    any ejabberdctl command
#
# Users and rosters: one `ejabberdctl import_piefxis` of a file written by
# `switchboard-bench graph --lattice 1 --format piefxis` (user1..userU,
# password EJ_PASSWORD, friends i±1 … i±FRIENDS/2 with subscription both).
# Measured on the 2-core bench host while busy: 5000 users and 50,000
# roster items in 14 s; `ejabberdctl register` and `add_rosteritem` take
# 0.4 s a call each (a new Erlang node per call), 5000 + 50,000 calls
# would be over 6 hours. The imported spool is kept per U and copied for
# every run, so each run starts on the same fresh database.
#
# Settings: EJ_PORT (5280), EJ_NODE (sbpeer@localhost), EJ_HOST (localhost),
# EJ_PASSWORD (pw), FRIENDS (10), EJ_ERL_OPTIONS (extra emulator flags,
# e.g. "+sbwt none"; default none: the Erlang VM as Debian ships it),
# BENCH (the switchboard-bench binary; default target/release/...).
set -eu
cd "$(dirname "$0")/../.."
EJ_PORT=${EJ_PORT:-5280}
EJ_NODE=${EJ_NODE:-sbpeer@localhost}
EJ_HOST=${EJ_HOST:-localhost}
EJ_PASSWORD=${EJ_PASSWORD:-pw}
FRIENDS=${FRIENDS:-10}
EJ_ERL_OPTIONS=${EJ_ERL_OPTIONS:-}
BENCH=${BENCH:-${CARGO_TARGET_DIR:-target}/release/switchboard-bench}
TEMPLATE=$PWD/bench/ejabberd/ejabberd.yml.in

[ $# -ge 2 ] || { sed -n '2,30p' "$0"; exit 2; }
cmd=$1
DIR=$(mkdir -p "$2" && cd "$2" && pwd)
shift 2

# The node runs as `ejabberd` when we are root: it must own what it writes.
owner() { [ "$(id -u)" = 0 ] && chown -R ejabberd:ejabberd "$@" || true; }

configure() {
  mkdir -p "$DIR/logs"
  sed -e "s/@PORT@/$EJ_PORT/" -e "s/@HOST@/$EJ_HOST/" "$TEMPLATE" >"$DIR/ejabberd.yml"
  cp /etc/ejabberd/inetrc "$DIR/inetrc"
  cat >"$DIR/ejabberdctl.cfg" <<EOF
ERL_OPTIONS="-env ERL_CRASH_DUMP_BYTES 0 $EJ_ERL_OPTIONS"
EJABBERD_PID_PATH=$DIR/ejabberd.pid
EJABBERD_BYPASS_WARNINGS=true
EOF
  chmod 755 "$DIR"
  owner "$DIR"
}

# As root, become the ejabberd user with setpriv rather than letting
# ejabberdctl `su` to it: su's PAM session drops the open-files limit to
# 1024, and at 1000 users (2000 connections) ejabberd then fails accepts
# ("too many open files"). HOME is where the ejabberd user's Erlang cookie is.
ulimit -n "$(ulimit -Hn)"
as_ejabberd() { # COMMAND...: as the ejabberd user (we are root) or as we are
  if [ "$(id -u)" = 0 ]; then
    env HOME=/var/lib/ejabberd setpriv --reuid=ejabberd --regid=ejabberd --init-groups "$@"
  else
    "$@"
  fi
}

ctl() { # ARGS: ejabberdctl on our node and files
  as_ejabberd ejabberdctl --config-dir "$DIR" --config "$DIR/ejabberd.yml" --ctl-config "$DIR/ejabberdctl.cfg" \
    --spool "$DIR/spool" --logs "$DIR/logs" --node "$EJ_NODE" "$@"
}

beam_pid() { # the beam.smp whose node name is exactly EJ_NODE (not a ctl node's)
  for p in /proc/[0-9]*; do
    [ "$(cat "$p/comm" 2>/dev/null)" = beam.smp ] || continue
    tr '\0' '\n' <"$p/cmdline" 2>/dev/null | grep -qx "$EJ_NODE" && { echo "${p#/proc/}"; return 0; }
  done
  return 1
}

start() {
  mkdir -p "$DIR/spool"
  owner "$DIR/spool"
  ctl start
  ctl started || { echo "ejabberd did not start; $DIR/logs:" >&2; tail -n 20 "$DIR/logs/"*.log >&2; exit 1; }
}

stop() {
  pid=$(beam_pid) || return 0
  ctl stop >/dev/null 2>&1 || true
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill "$pid" 2>/dev/null || true
  # The node started epmd; stop it too when no other node is registered
  # (what `ejabberdctl stopped` does).
  epmd -names 2>/dev/null | grep -q name || epmd -kill >/dev/null 2>&1 || true
}

case $cmd in
users)
  U=$1
  [ -d "$DIR/spool-$U" ] && { echo "$DIR/spool-$U exists"; exit 0; }
  stop
  configure
  "$BENCH" graph --users "$U" --friends "$FRIENDS" --lattice 1 --format piefxis \
    --xmpp-domain "$EJ_HOST" --password "$EJ_PASSWORD" --out "$DIR/users-$U.xml"
  owner "$DIR/users-$U.xml"
  rm -rf "$DIR/spool"
  start
  t0=$(date +%s.%N)
  ctl import_piefxis "$DIR/users-$U.xml"
  t1=$(date +%s.%N)
  n=$(ctl registered_users "$EJ_HOST" | wc -l)
  echo "imported $n users and their rosters in $(awk "BEGIN { printf \"%.1f\", $t1 - $t0 }") s"
  [ "$n" = "$U" ] || { echo "expected $U users" >&2; stop; exit 1; }
  stop
  mv "$DIR/spool" "$DIR/spool-$U"
  ;;
start)
  U=$1
  [ -d "$DIR/spool-$U" ] || { echo "no $DIR/spool-$U: run '$0 users $DIR $U' first" >&2; exit 1; }
  [ "$(ulimit -n)" -ge $((2 * U + 1000)) ] ||
    echo "warning: open-files limit $(ulimit -n) is below 2 connections per user" >&2
  stop
  configure
  rm -rf "$DIR/spool"
  cp -a "$DIR/spool-$U" "$DIR/spool"
  : >"$DIR/logs/ejabberd.log"
  start >/dev/null
  beam_pid
  ;;
stop) stop ;;
pid) beam_pid ;;
ctl) ctl "$@" ;;
*) echo "unknown command $cmd" >&2; exit 2 ;;
esac
