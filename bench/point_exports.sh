#!/usr/bin/env bash
# Point exports and restores over sparse history (issue 13, item 4). A program, not a test;
# results go to BENCHMARKS.md.
#
#   bench/point_exports.sh [REWIND_BINARY LABEL]...    (default: target/release/rewind now)
#
# For each binary: a 4 GiB sparse volume is served; the live export gets a whole-volume
# discard (qemu-io, 4 x 1 GiB), 64 MiB of data at 0 and 1 MiB every 64 MiB (snapshot
# "after"), then 4 MiB written and 1 GiB discarded in the open interval (point seq:N, a
# replay), then 8192 writes of 4 KiB every 512 KiB (snapshot "frag", ~16k extents). It times
# qemu-img map / convert, nbdcopy and nbdinfo --map of those points (qemu-img map of "frag"
# and nbdinfo --map are stopped after 120 s), then `rewind restore` of an empty 8 GiB volume
# and of "after". Pass several binaries to compare them in one run (same machine, same load).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ $# -eq 0 ]; then set -- "$ROOT/target/release/rewind" now; fi
for t in qemu-img qemu-io nbdcopy nbdinfo python3 bc; do
  command -v $t >/dev/null || { echo "bench/point_exports.sh needs $t" >&2; exit 1; }
done

secs() { echo "$(date +%s.%N) - $1" | bc; }

# The server and the work directory of the binary being measured.
SP="" W=""
cleanup() {
  if [ -n "$SP" ]; then kill -INT "$SP" 2>/dev/null || true; wait "$SP" 2>/dev/null || true; fi
  if [ -n "$W" ]; then cd / && rm -rf "$W"; fi
  SP="" W=""
}
trap cleanup EXIT

one() {
  local R=$1 L=$2 s
  W=$(mktemp -d /tmp/rewind-points.XXXXXX)
  cd "$W"
  truncate -s 4G vol.img
  "$R" init --primary vol.img --vault v >/dev/null
  "$R" serve --primary vol.img --vault v --socket "$W/s.sock" --listen none >serve.out 2>serve.log &
  SP=$!
  for _ in $(seq 100); do [ -S "$W/s.sock" ] && break; sleep 0.1; done
  local U="nbd+unix:///live?socket=$W/s.sock"
  qemu-io -f raw "$U" -c 'discard 0 1G' -c 'discard 1G 1G' -c 'discard 2G 1G' \
    -c 'discard 3G 1G' -c flush >/dev/null
  local args=(-c 'write -P 0xab 0 64M')
  for i in $(seq 1 63); do args+=(-c "write -P $((i % 250 + 1)) $((i * 64 + 7))M 1M"); done
  qemu-io -f raw "$U" "${args[@]}" -c flush >/dev/null
  "$R" snapshot after --vault v >/dev/null
  qemu-io -f raw "$U" -c 'write -P 0xcd 100M 4M' -c 'discard 200M 1G' -c flush >/dev/null
  local now
  now=$("$R" status --vault v --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["newest_seq"])')
  for P in after "seq:$now"; do
    local E="nbd+unix:///@$P?socket=$W/s.sock"
    s=$(date +%s.%N); qemu-img map --output=json "$E" >map.json
    printf "%s: qemu-img map @%s %.3f s (%d extents)\n" "$L" "$P" "$(secs "$s")" "$(grep -c start map.json)"
    s=$(date +%s.%N); qemu-img convert -O raw "$E" conv.raw
    printf "%s: qemu-img convert -O raw @%s %.3f s (%s allocated)\n" "$L" "$P" "$(secs "$s")" "$(du -h conv.raw | cut -f1)"
    rm -f conv.raw
    s=$(date +%s.%N); nbdcopy "$E" copy.raw
    printf "%s: nbdcopy @%s %.3f s\n" "$L" "$P" "$(secs "$s")"
    rm -f copy.raw
    s=$(date +%s.%N); nbdinfo --map "$E" >nbdmap.txt
    printf "%s: nbdinfo --map @%s %.3f s (%d lines)\n" "$L" "$P" "$(secs "$s")" "$(wc -l <nbdmap.txt)"
  done
  python3 -c '
for i in range(8192): print("write -P 0x5a %d 4096" % (i * 524288 + 262144))
print("flush")' >frag.cmds
  qemu-io -f raw "$U" <frag.cmds >/dev/null
  "$R" snapshot frag --vault v >/dev/null
  local E="nbd+unix:///@frag?socket=$W/s.sock"
  for cmd in "qemu-img map --output=json" "nbdinfo --map"; do
    s=$(date +%s.%N)
    if timeout 120 $cmd "$E" >out.txt; then
      printf "%s: %s @frag %.3f s (%d lines)\n" "$L" "$cmd" "$(secs "$s")" "$(wc -l <out.txt)"
    else
      echo "$L: $cmd @frag: more than 120 s (stopped)"
    fi
  done
  E="nbd+unix:///@seq:0?socket=$W/s.sock"
  echo "$L: nbdinfo --map @seq:0: $(nbdinfo --map "$E" | tr -s ' ' | head -3 | tr '\n' '|')"
  s=$(date +%s.%N); qemu-img convert -O raw "$E" conv.raw
  printf "%s: qemu-img convert -O raw @seq:0 %.3f s\n" "$L" "$(secs "$s")"
  rm -f conv.raw
  kill -INT "$SP"; wait "$SP" || true
  SP=""
  truncate -s 8G empty.img
  "$R" init --primary empty.img --vault ve >/dev/null
  s=$(date +%s.%N); "$R" restore --vault ve --at seq:0 --to r.img >/dev/null 2>&1
  printf "%s: restore of an empty 8 GiB volume %.3f s (%s allocated)\n" "$L" "$(secs "$s")" "$(du -h r.img | cut -f1)"
  s=$(date +%s.%N); "$R" restore --vault v --at after --to r2.img >/dev/null 2>&1
  printf "%s: restore of 4 GiB @after %.3f s (%s allocated)\n" "$L" "$(secs "$s")" "$(du -h r2.img | cut -f1)"
  cleanup
}

echo "$(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg)"
while [ $# -ge 2 ]; do
  one "$1" "$2"
  echo "load $(cut -d' ' -f1-3 /proc/loadavg)"
  shift 2
done
