#!/usr/bin/env bash
# Verify speed: `rewind verify` against `qemu-img compare` on the same files, in one run.
# A program, not a test; results go to BENCHMARKS.md ("Verify vs qemu-img compare").
#
#   bench/verify.sh [--size 2G] [--rounds 5] [--dir DIR] [--keep] [--no-build]
#
# Scenarios (each a primary and a fresh vault of it, so the two images are identical):
#   dense   the primary is random data throughout (no holes): both tools read every byte
#           of the primary and of the vault's base image (4 GiB for a 2 GiB volume)
#   sparse  1 MiB extents of random data in 1/8 of the volume, holes elsewhere (both
#           tools may skip holes)
#   dense, 1 thread   the same with `rewind verify --threads 1` (qemu-img compare uses one
#           thread for the comparison; rewind by default one worker per CPU, at most 4)
#   dirty   the dense volume with 1 MiB written through `rewind serve` into each of 2 of its
#           16 MiB regions (flushed), then the server killed (-9): its dirty region log lists
#           those 2 regions. `rewind verify --dirty-only` reads only them; the row after it
#           is the full verify of the same files, for the ratio. qemu-img compare reads a
#           restored copy of the newest point.
#   log     the dense volume with its first quarter rewritten through `rewind serve`, so
#           a quarter of the vault side comes from write log records, not the base image;
#           qemu-img compare then reads a restored copy of the vault's newest point (the
#           nearest equivalent), so this row shows rewind's cost of reading the log
# For each, the two commands run alternately, `--rounds` times after one untimed warm-up
# each; times are wall-clock (process start to exit) and the median is reported. Both
# must say "identical" every time, or the run fails. The page cache is warm (the images fit
# in memory): this measures CPU and memory bandwidth, not the disk.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
size=2G
rounds=5
dir="$ROOT/target/bench-verify"
keep=0
build=1

usage() { sed -n '2,27p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --size) size="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --dir) dir="$2"; [[ "$dir" = /* ]] || dir="$PWD/$dir"; shift 2 ;;
    --keep) keep=1; shift ;;
    --no-build) build=0; shift ;;
    *) echo "verify.sh: unknown argument $1 (--help)" >&2; exit 2 ;;
  esac
done

for t in qemu-img qemu-io python3 cargo; do
  command -v "$t" >/dev/null 2>&1 || { echo "verify.sh: needs $t (scripts/test.sh installs qemu-utils)" >&2; exit 1; }
done

cd "$ROOT"
if [[ $build -eq 1 ]]; then
  echo "+ cargo build --release -p rewind-cli" >&2
  cargo build --release -p rewind-cli >&2
fi
R="$ROOT/target/release/rewind"
bytes=$(python3 -c "import sys; s=sys.argv[1].upper(); m={'K':1<<10,'M':1<<20,'G':1<<30}; print(int(float(s[:-1])*m[s[-1]]) if s[-1] in m else int(s))" "$size")
mib=$((bytes >> 20))

mkdir -p "$dir"
load0=$(cut -d' ' -f1-3 /proc/loadavg)
server=
cleanup() {
  if [[ -n "$server" ]]; then kill -TERM "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
  if [[ $keep -eq 0 ]]; then rm -rf "$dir/dense" "$dir/sparse" "$dir/log" "$dir/dirty"; fi
}
trap cleanup EXIT

now_ns() { date +%s%N; }

# make_dense DIR: a primary of random data and its vault.
make_dense() {
  mkdir -p "$1"
  head -c "$bytes" /dev/urandom > "$1/p.img"
  "$R" init --primary "$1/p.img" --vault "$1/v" >/dev/null
}

# make_sparse DIR: 1 MiB random extents in every 8th MiB, holes elsewhere.
make_sparse() {
  mkdir -p "$1"
  truncate -s "$bytes" "$1/p.img"
  python3 - "$1/p.img" "$mib" <<'EOF'
import os, sys
path, mib = sys.argv[1], int(sys.argv[2])
with open(path, "r+b") as f:
    for i in range(0, mib, 8):
        f.seek(i << 20)
        f.write(os.urandom(1 << 20))
EOF
  "$R" init --primary "$1/p.img" --vault "$1/v" >/dev/null
}

# make_log DIR: dense, then the first quarter rewritten through rewind serve (so it is in
# the write log), the server stopped cleanly, and the newest point restored for qemu-img.
make_log() {
  make_dense "$1"
  "$R" serve --primary "$1/p.img" --vault "$1/v" --socket "$1/nbd.sock" --listen none >"$1/serve.log" 2>&1 &
  server=$!
  for _ in $(seq 200); do [[ -f "$1/v/control" ]] && break; sleep 0.05; done
  qemu-io -f raw "nbd+unix:///live?socket=$1/nbd.sock" \
    -c "write -P 0x5a 0 $((bytes / 4))" -c flush >/dev/null
  kill -TERM "$server"; wait "$server" || true; server=
  "$R" restore --vault "$1/v" --at now --to "$1/restored.img" >/dev/null
}

# make_dirty DIR: dense, then two 1 MiB writes far apart through rewind serve, flushed, and
# the server killed: the DRL keeps their two regions dirty.
make_dirty() {
  make_dense "$1"
  "$R" serve --primary "$1/p.img" --vault "$1/v" --socket "$1/nbd.sock" --listen none >"$1/serve.log" 2>&1 &
  server=$!
  for _ in $(seq 200); do [[ -f "$1/v/control" ]] && break; sleep 0.05; done
  qemu-io -f raw "nbd+unix:///live?socket=$1/nbd.sock" \
    -c "write -P 0x5b $((100 << 20)) 1M" -c "write -P 0x5c $((bytes / 2)) 1M" -c flush >/dev/null
  kill -KILL "$server"; wait "$server" 2>/dev/null || true; server=
  "$R" restore --vault "$1/v" --at now --to "$1/restored.img" >/dev/null
}

# time_cmd: runs the command, prints wall-clock seconds; fails unless it exits 0.
time_cmd() {
  local t0 t1
  t0=$(now_ns)
  if ! "$@" >/dev/null 2>&1; then
    echo "verify.sh: '$*' did not report identical images" >&2
    exit 1
  fi
  t1=$(now_ns)
  python3 -c "print(f'{($t1 - $t0) / 1e9:.3f}')"
}

median() { python3 -c "import statistics,sys; print(f'{statistics.median(map(float, sys.argv[1:])):.3f}')" "$@"; }

results=()
run_scenario() {
  local name="$1" a="$2" b="$3" d="$4"
  shift 4
  local q=() r=() l0
  l0=$(cut -d' ' -f1 /proc/loadavg)
  # One untimed run of each warms the page cache.
  time_cmd qemu-img compare -f raw -F raw "$a" "$b" >/dev/null
  time_cmd "$R" verify --vault "$d/v" --primary "$d/p.img" "$@" >/dev/null
  for i in $(seq "$rounds"); do
    q+=("$(time_cmd qemu-img compare -f raw -F raw "$a" "$b")")
    r+=("$(time_cmd "$R" verify --vault "$d/v" --primary "$d/p.img" "$@")")
    echo "  $name round $i: qemu-img compare ${q[-1]} s, rewind verify ${r[-1]} s" >&2
  done
  local qm rm ratio
  qm=$(median "${q[@]}")
  rm=$(median "${r[@]}")
  ratio=$(python3 -c "print(f'{$qm / $rm:.2f}')")
  results+=("| $name | ${q[*]} | ${r[*]} | $qm | $rm | **$ratio** | $l0 / $(cut -d' ' -f1 /proc/loadavg) |")
}

echo "making $size images in $dir ..." >&2
make_dense "$dir/dense"
run_scenario dense "$dir/dense/p.img" "$dir/dense/v/base/base.img" "$dir/dense"
run_scenario "dense, 1 thread" "$dir/dense/p.img" "$dir/dense/v/base/base.img" "$dir/dense" --threads 1
make_sparse "$dir/sparse"
run_scenario sparse "$dir/sparse/p.img" "$dir/sparse/v/base/base.img" "$dir/sparse"
make_log "$dir/log"
run_scenario log "$dir/log/p.img" "$dir/log/restored.img" "$dir/log"
make_dirty "$dir/dirty"
run_scenario "dirty-only (2 dirty regions of 16 MiB)" "$dir/dirty/p.img" "$dir/dirty/restored.img" "$dir/dirty" --dirty-only
run_scenario "same files, full verify" "$dir/dirty/p.img" "$dir/dirty/restored.img" "$dir/dirty"

cpu=$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1)
mem=$(free -g 2>/dev/null | awk '/^Mem:/ {print $2 " GiB"}')
fs=$(df -T "$dir" | awk 'NR==2 {print $2 " on " $1}')
echo
echo "Date: $(date -u +%Y-%m-%dT%H:%MZ). Machine: $(nproc) cores ($cpu), $mem memory, $dir on $fs,"
echo "kernel $(uname -r), $(qemu-img --version | head -1). Source: git $(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet || echo ' (uncommitted changes)')."
echo "Load average before the run: $load0. Command: bench/verify.sh --size $size --rounds $rounds"
echo
echo "| scenario ($size) | qemu-img compare, s | rewind verify, s | qemu-img median | rewind median | qemu / rewind | load before / after |"
echo "|---|---|---|---:|---:|---:|---:|"
printf '%s\n' "${results[@]}"
