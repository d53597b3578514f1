#!/usr/bin/env bash
# A/B of two `rewind` binaries on the hot write path: fio's nbd engine over a unix socket
# against `rewind serve`, a fresh vault and a fallocated primary for every job, the two
# binaries alternating. A program, not a test; results go to BENCHMARKS.md.
#
#   bench/ab.sh BASE_BINARY NEW_BINARY [PAIRS (3)] [SECONDS (15)] [DIR (./target/ab)]
set -euo pipefail
A=$(realpath "$1"); B=$(realpath "$2"); PAIRS=${3:-3}; SECS=${4:-15}; DIR=${5:-./target/ab}
mkdir -p "$DIR"; DIR=$(realpath "$DIR")
command -v fio >/dev/null || { echo "ab.sh: needs fio (apt-get install fio)" >&2; exit 2; }

job() { # binary label fio-args...
  local bin=$1 label=$2; shift 2
  rm -rf "$DIR/v" && mkdir -p "$DIR/v" && cd "$DIR/v"
  fallocate -l 2G vm.img
  "$bin" init --primary vm.img --vault vm.vault > /dev/null
  "$bin" serve --vault vm.vault --listen none --socket "$DIR/v/nbd.sock" > serve.log 2>&1 &
  local pid=$!
  for _ in $(seq 100); do [[ -S "$DIR/v/nbd.sock" ]] && break; sleep 0.1; done
  fio --name=j --ioengine=nbd --uri="nbd+unix:///live?socket=$DIR/v/nbd.sock" --size=2G \
      --time_based --runtime="$SECS" --output-format=json "$@" 2>/dev/null | sed -n "/^{/,\$p" > fio.json
  kill -INT "$pid"; wait "$pid" || true
  python3 - "$label" <<'PY'
import json, sys
j = json.load(open("fio.json"))["jobs"][0]["write"]
p99 = j["clat_ns"]["percentile"].get("99.000000", 0) / 1e6
print(f"{sys.argv[1]}: {j['bw'] / 1024:.1f} MiB/s, {j['iops']:.0f} IOPS, p99 {p99:.2f} ms")
PY
  cd - > /dev/null
}

for i in $(seq "$PAIRS"); do
  for side in base new; do
    bin=$A; [[ $side == new ]] && bin=$B
    job "$bin" "randwrite 4k QD32 $side #$i" --rw=randwrite --bs=4k --iodepth=32
    job "$bin" "write 1M QD8 $side #$i" --rw=write --bs=1M --iodepth=8
  done
done
rm -rf "$DIR/v"
