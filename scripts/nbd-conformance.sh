#!/usr/bin/env bash
# Runs the NBD reference test suite's client (nbd-tester-client, from the
# NetworkBlockDevice/nbd repository's tests/run) against `rewind serve`: one fresh primary,
# vault and server per test, and prints PASS / FAIL / N/A per test.
#
#   scripts/nbd-conformance.sh [--rewind BIN] [--nbd-client BIN] [--keep] TESTER [TRACE_DIR]
#
# TESTER     a built nbd-tester-client (in an nbd checkout: ./autogen.sh && ./configure &&
#            make && make -C tests/run nbd-tester-client)
# TRACE_DIR  where integrity-test.tr and integrityhuge-test.tr are (default: TESTER's dir)
# --rewind   the rewind binary (default: target/debug/rewind, built first)
# --nbd-client  nbd-client for the `list` test's `nbd-client -l` (default: TESTER's
#            ../../nbd-client, then PATH; without one, `list` runs only its tester part)
# --keep     keep the scratch directory (primary, vault, server log) of every test
#
# The tests and how each is invoked follow tests/run/simple_test of that repository; the
# export names are rewind's: `live` (read-write) and `@seq:0` (the base image, read-only)
# where nbd-server's config has a read-only export. Exit status: 0 when every applicable
# test passed. It needs the network only to fetch and build the tester, so it cannot run in
# CI (which reaches package registries only).
set -uo pipefail
cd "$(dirname "$0")/.."

REWIND="" NBD_CLIENT="" KEEP=""
while [ $# -gt 0 ]; do
  case "$1" in
    --rewind) REWIND="$2"; shift 2 ;;
    --nbd-client) NBD_CLIENT="$2"; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) break ;;
  esac
done
[ $# -ge 1 ] || { sed -n '2,20p' "$0" >&2; exit 2; }
TESTER="$(realpath "$1")"
TRACES="$(realpath "${2:-$(dirname "$TESTER")}")"
[ -x "$TESTER" ] || { echo "nbd-conformance: $TESTER is not an executable" >&2; exit 2; }
if [ -z "$REWIND" ]; then
  REWIND=target/debug/rewind
  cargo build -q -p rewind-cli || exit 2
fi
REWIND="$(realpath "$REWIND")"
if [ -z "$NBD_CLIENT" ]; then
  for c in "$(dirname "$TESTER")/../../nbd-client" "$(command -v nbd-client || true)"; do
    [ -n "$c" ] && [ -x "$c" ] && { NBD_CLIENT="$(realpath "$c")"; break; }
  done
fi

SCRATCH="$(mktemp -d "${TMPDIR:-/tmp}/rewind-nbd-conformance.XXXXXX")"
SERVER_PID=""
stop_server() {
  if [ -n "$SERVER_PID" ]; then
    kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
    SERVER_PID=""
  fi
}
cleanup() { stop_server; [ -n "$KEEP" ] && echo "scratch kept in $SCRATCH" || rm -rf "$SCRATCH"; }
trap cleanup EXIT

# start_server NAME SIZE: a fresh primary of SIZE bytes (zeroes, like simple_test's dd),
# its vault, and `rewind serve` on loopback TCP (port chosen by the kernel) and a unix
# socket. Sets DIR, PORT, SOCK.
start_server() {
  DIR="$SCRATCH/$1"
  mkdir -p "$DIR"
  truncate -s "$2" "$DIR/primary.img"
  "$REWIND" init --primary "$DIR/primary.img" --vault "$DIR/vault" >"$DIR/init.log" 2>&1 ||
    { echo "rewind init failed: $(cat "$DIR/init.log")"; return 1; }
  SOCK="$DIR/nbd.sock"
  "$REWIND" serve --primary "$DIR/primary.img" --vault "$DIR/vault" \
    --listen 127.0.0.1:0 --socket "$SOCK" >"$DIR/serve.log" 2>&1 &
  SERVER_PID=$!
  PORT=""
  for _ in $(seq 200); do
    PORT="$(sed -n 's|.*listening on nbd://127\.0\.0\.1:\([0-9]*\).*|\1|p' "$DIR/serve.log")"
    [ -n "$PORT" ] && [ -S "$SOCK" ] && return 0
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.05
  done
  echo "rewind serve did not start: $(cat "$DIR/serve.log")"
  return 1
}

tester() { "$TESTER" "$@" >>"$DIR/tester.log" 2>&1; }

# One test per function, as simple_test invokes nbd-tester-client (host 127.0.0.1).
t_cfg1() { tester -N live 127.0.0.1 "$PORT"; }
t_cfgnew() { tester -N live 127.0.0.1 "$PORT"; }
t_cfgmulti() { tester -N live 127.0.0.1 "$PORT" && tester -N @seq:0 127.0.0.1 "$PORT"; }
t_cfgsize() { tester -o -N live 127.0.0.1 "$PORT"; }
t_write() { tester -N live -w 127.0.0.1 "$PORT"; }
t_flush() { tester -N live -w -f 127.0.0.1 "$PORT"; }
t_integrity() { tester -N live -i -t "$TRACES/integrity-test.tr" 127.0.0.1 "$PORT"; }
t_integrityhuge() { tester -N live -i -t "$TRACES/integrityhuge-test.tr" 127.0.0.1 "$PORT"; }
t_rowrite() { tester -N @seq:0 -w -F 127.0.0.1 "$PORT"; }
t_unix() { tester -N live -u "$SOCK"; }
t_handshake() { tester -h -N live 127.0.0.1 "$PORT"; }
t_list() {
  if [ -n "$NBD_CLIENT" ]; then
    "$NBD_CLIENT" -l 127.0.0.1 "$PORT" >>"$DIR/tester.log" 2>&1 || return 1
    grep -Eq '^live(:|$)' "$DIR/tester.log" || { echo "live not listed" >>"$DIR/tester.log"; return 1; }
  else
    echo "no nbd-client: only the tester part of list runs" >>"$DIR/tester.log"
  fi
  tester -N @seq:0 127.0.0.1 "$PORT"
}

# Tests of simple_test that do not apply, and why.
declare -A NA=(
  [dirconfig]="nbd-server's config.d includes; on the wire the same as cfg1"
  [tree]="nbd-server's tree-files storage; on the wire the same as write"
  [rotree]="nbd-server's tree-files storage; on the wire the same as rowrite"
  [inetd]="nbd-server started by inetd on stdin; rewind serve has no inetd mode"
  [tls]="TLS: rewind has no TLS yet (NBD_OPT_STARTTLS is answered NBD_REP_ERR_UNSUP)"
  [tlswrongcert]="TLS: rewind has no TLS yet"
  [tlshuge]="TLS: rewind has no TLS yet"
  [connstatus]="nbd-client's netlink status check against a mocked libnl; no server"
  [nlconnect]="nbd-client connecting /dev/nbd0 through a mocked libnl"
  [persist]="nbd-client's persist mode through a mocked libnl"
)
# In the order of tests/run/Makefile.am's TESTS.
ALL=(cfg1 cfgmulti cfgnew cfgsize write flush integrity dirconfig list inetd rowrite tree
  rotree unix integrityhuge handshake tls tlswrongcert tlshuge connstatus nlconnect persist)

pass=0 fail=0 failed=()
for t in "${ALL[@]}"; do
  if [ -n "${NA[$t]:-}" ]; then
    printf '%-14s N/A   %s\n' "$t" "${NA[$t]}"
    continue
  fi
  size=$((4 << 20))
  case "$t" in integrity*) size=52428800 ;; esac
  start=$(date +%s%N)
  if start_server "$t" "$size" >"$SCRATCH/start.err" && "t_$t"; then
    result=PASS
    pass=$((pass + 1))
  else
    result=FAIL
    fail=$((fail + 1))
    failed+=("$t")
  fi
  stop_server
  ms=$((($(date +%s%N) - start) / 1000000))
  printf '%-14s %-5s %3d.%01ds\n' "$t" "$result" $((ms / 1000)) $((ms % 1000 / 100))
  if [ "$result" = FAIL ]; then
    cat "$SCRATCH/start.err" 2>/dev/null | sed 's/^/    /'
    tail -n 5 "$DIR/tester.log" 2>/dev/null | sed 's/^/    tester: /'
    grep -E 'WARN|ERROR' "$DIR/serve.log" 2>/dev/null | tail -n 3 | sed 's/^/    server: /'
  fi
done
echo "passed $pass, failed $fail${failed[*]:+: ${failed[*]}}, not applicable ${#NA[@]}"
[ "$fail" -eq 0 ]
