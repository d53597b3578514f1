#!/usr/bin/env bash
# A 1 TiB volume, end to end, the way a user would run it (issue 15, item 2). A program,
# not a test; results go to BENCHMARKS.md. Needs root (loop devices, mount), nbdfuse,
# nbdkit, mkfs.ext4, fstrim, fsfreeze.
#
#   sudo bench/tib_demo.sh [SIZE] [GIB_OF_FILES]      (defaults: 1T 4)
#
# rewind: a sparse SIZE primary, `rewind init`, `rewind serve`, the live export as a file
# through nbdfuse, a loop device over it, `mkfs.ext4` (which discards the whole device),
# mount, GIB_OF_FILES GiB of files written and synced, half of them removed and `fstrim`,
# the file system frozen for a snapshot, the snapshot exported, mounted read-only and a file
# compared, `rewind list` timed. nbdkit: the same steps on its file plugin (no snapshot:
# it has none). Prints each step's time, the server's peak RSS, and the ratios.
set -euo pipefail

SIZE=${1:-1T}
GIB=${2:-4}
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
R="$ROOT/target/release/rewind"
for t in nbdfuse nbdkit mkfs.ext4 fstrim fsfreeze losetup python3 bc; do
  command -v $t >/dev/null || { echo "bench/tib_demo.sh needs $t" >&2; exit 1; }
done
[ -x "$R" ] || { echo "build it first: cargo build --release -p rewind-cli" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || { echo "bench/tib_demo.sh needs root (loop devices, mount)" >&2; exit 1; }

W=$(mktemp -d "${TMPDIR:-/var/tmp}/rewind-tib.XXXXXX")
SP="" FUSES=() LOOPS=() MOUNTS=()
cleanup() {
  set +e
  for m in "${MOUNTS[@]}"; do fsfreeze -u "$m" 2>/dev/null; umount "$m" 2>/dev/null; done
  for l in "${LOOPS[@]}"; do losetup -d "$l" 2>/dev/null; done
  # A detached loop device lets go of its file a moment later.
  for f in "${FUSES[@]}"; do
    for _ in $(seq 100); do fusermount3 -u "$f" 2>/dev/null && break; sleep 0.05; done
  done
  if [ -n "$SP" ]; then kill -INT "$SP" 2>/dev/null; wait "$SP" 2>/dev/null; fi
  MOUNTS=() LOOPS=() FUSES=() SP=""
}
trap 'cleanup; rm -rf "$W"' EXIT

now() { date +%s.%N; }
secs() { echo "$(now) - $1" | bc; }
declare -A T
step() { # step LABEL NAME command...: times one step
  local label=$1 name=$2 s
  shift 2
  s=$(now)
  "$@"
  T[$label.$name]=$(secs "$s")
  printf '%-8s %-34s %8.3f s\n' "$label" "$name" "${T[$label.$name]}" >&3
}
exec 3>&1

# A file of incompressible data to copy: written once, outside the timed steps.
head -c $((256 << 20)) /dev/urandom >"$W/chunk"

wait_for() { for _ in $(seq 2000); do [ -e "$1" ] && return 0; sleep 0.005; done; return 1; }
fuse() { # fuse DIR URI: the export as DIR/nbd
  mkdir -p "$1"
  nbdfuse "$1" "$2" &
  FUSES+=("$1")
  for _ in $(seq 2000); do [ -f "$1/nbd" ] && return 0; sleep 0.005; done
  echo "nbdfuse did not come up on $1" >&2
  return 1
}
DEV=""
loop() { # loop FILE [ro]: a loop device over FILE, in $DEV
  if [ "${2:-}" = ro ]; then DEV=$(losetup -f --show -r "$1"); else DEV=$(losetup -f --show "$1"); fi
  LOOPS+=("$DEV")
}
write_files() {
  for i in $(seq 1 $((GIB * 4))); do cp "$W/chunk" "$1/f$i"; done
  sync -f "$1"
}
thin_out() {
  for i in $(seq 1 2 $((GIB * 4))); do rm "$1/f$i"; done
  sync -f "$1"
  fstrim "$1"
}

peak_rss() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }

# ---- rewind ----------------------------------------------------------------------------
D="$W/rewind"
mkdir -p "$D/mnt" "$D/snap"
truncate -s "$SIZE" "$D/vol.img"
START=$(now)
step rewind init "$R" init --primary "$D/vol.img" --vault "$D/v" >/dev/null
s=$(now)
"$R" serve --primary "$D/vol.img" --vault "$D/v" --socket "$D/s.sock" --listen none \
  >"$D/serve.out" 2>"$D/serve.log" &
SP=$!
wait_for "$D/s.sock"
until "$R" status --vault "$D/v" --json >/dev/null 2>&1; do sleep 0.005; done
T[rewind.serve]=$(secs "$s")
printf '%-8s %-34s %8.3f s\n' rewind "serve (until status answers)" "${T[rewind.serve]}"
fuse "$D/fuse" "nbd+unix:///live?socket=$D/s.sock"
loop "$D/fuse/nbd"
step rewind "mkfs.ext4 (discards $SIZE)" mkfs.ext4 -q -F "$DEV"
mount "$DEV" "$D/mnt"
MOUNTS=("$D/mnt")
step rewind "write $GIB GiB of files + sync" write_files "$D/mnt"
step rewind "remove half + fstrim" thin_out "$D/mnt"
fsfreeze -f "$D/mnt"
step rewind "snapshot (file system frozen)" "$R" snapshot demo --vault "$D/v" >/dev/null
fsfreeze -u "$D/mnt"
fuse "$D/fuse-snap" "nbd+unix:///@demo?socket=$D/s.sock"
loop "$D/fuse-snap/nbd" ro
step rewind "mount snapshot read-only" mount -o ro,noload "$DEV" "$D/snap"
MOUNTS+=("$D/snap")
step rewind "compare a file in the snapshot" cmp "$D/snap/f2" "$D/mnt/f2"
step rewind "rewind list" "$R" list --vault "$D/v" >/dev/null
T[rewind.total]=$(secs "$START")
RSS=$(peak_rss "$SP")
MAPS=$(du -sb "$D/v/maps" | cut -f1)
VAULT=$(du -sh "$D/v" | cut -f1)
cleanup
printf '%-8s %-34s %8.3f s\n' rewind total "${T[rewind.total]}"
echo "rewind   server peak RSS $((RSS / 1024)) MiB; delta maps $MAPS bytes; vault $VAULT on disk"
rm -rf "$D"

# ---- nbdkit (file plugin) --------------------------------------------------------------
D="$W/nbdkit"
mkdir -p "$D/mnt"
truncate -s "$SIZE" "$D/vol.img"
START=$(now)
s=$(now)
nbdkit --foreground --unix "$D/s.sock" file "$D/vol.img" &
SP=$!
wait_for "$D/s.sock"
T[nbdkit.serve]=$(secs "$s")
printf '%-8s %-34s %8.3f s\n' nbdkit "serve (until the socket is there)" "${T[nbdkit.serve]}"
fuse "$D/fuse" "nbd+unix:///?socket=$D/s.sock"
loop "$D/fuse/nbd"
step nbdkit "mkfs.ext4 (discards $SIZE)" mkfs.ext4 -q -F "$DEV"
mount "$DEV" "$D/mnt"
MOUNTS+=("$D/mnt")
step nbdkit "write $GIB GiB of files + sync" write_files "$D/mnt"
step nbdkit "remove half + fstrim" thin_out "$D/mnt"
T[nbdkit.total]=$(secs "$START")
KRSS=$(peak_rss "$SP")
cleanup
printf '%-8s %-34s %8.3f s\n' nbdkit total "${T[nbdkit.total]}"
echo "nbdkit   server peak RSS $((KRSS / 1024)) MiB"

# ---- ratios ------------------------------------------------------------------------------
ratio() { echo "scale=2; $1 / $2" | bc; }
echo
echo "total rewind / nbdkit: $(ratio "${T[rewind.total]}" "${T[nbdkit.total]}") (target <= 1.5)"
for n in "mkfs.ext4 (discards $SIZE)" "write $GIB GiB of files + sync" "remove half + fstrim"; do
  echo "$n rewind / nbdkit: $(ratio "${T[rewind.$n]}" "${T[nbdkit.$n]}")"
done
echo "init ${T[rewind.init]} s (target <= 2), serve ready ${T[rewind.serve]} s (<= 1), list ${T[rewind.rewind list]} s (<= 0.1), peak RSS $((RSS / 1024)) MiB (<= 256)"
