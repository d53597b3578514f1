#!/bin/bash
# rewind check: how long it takes per GiB, and what it costs host writes (BENCHMARKS.md,
# "rewind check"). Needs fio with its nbd engine and a release build (cargo build --release).
# Usage: bench/check.sh [fio seconds per run]   (DIR: where the ~2 GiB vault goes)
set -e
B=$(realpath "${REWIND:-target/release/rewind}")
D=${DIR:-/tmp/rewind-check-bench}
RT=${1:-20}
rm -rf "$D" && mkdir -p "$D" && cd "$D"
export XDG_RUNTIME_DIR=$D
# A vault whose base image holds 1 GiB of data and whose write log 1 GiB more (1 MiB writes).
truncate -s 4G vm.img
head -c 1G /dev/urandom | dd of=vm.img conv=notrunc bs=1M status=none
"$B" init --primary vm.img --vault vm.vault > /dev/null
"$B" serve --vault vm.vault --socket "$D/nbd.sock" > serve.log 2>&1 & SERVER=$!
sleep 2
fio --name=fill --ioengine=nbd --uri="nbd+unix:///live?socket=$D/nbd.sock" --rw=write --bs=1M \
    --iodepth=8 --offset=1G --size=1G --end_fsync=1 --refill_buffers > fill.log
kill -INT $SERVER; wait $SERVER
# Offline: from the disk (the vault's pages dropped from the cache), then from the cache.
evict() { python3 -c 'import os,sys
for r,_,fs in os.walk(sys.argv[1]):
    for f in fs:
        fd=os.open(os.path.join(r,f),os.O_RDONLY); os.posix_fadvise(fd,0,0,os.POSIX_FADV_DONTNEED); os.close(fd)' vm.vault; }
for i in 1 2 3; do evict; "$B" check --vault vm.vault | head -1; done
for i in 1 2; do "$B" check --vault vm.vault | head -1; done
# Online: host write latency with and without a check running back to back.
"$B" serve --vault vm.vault --socket "$D/nbd.sock" > serve.log 2>&1 & SERVER=$!
sleep 2
run() { # name, then the check's options, or "none"
    local name=$1 loop=""; shift
    if [ "$1" != none ]; then
        ( while true; do "$B" check --vault vm.vault --json "$@" > /dev/null 2>&1 || true; done ) & loop=$!
        sleep 1
    fi
    fio --name=w --ioengine=nbd --uri="nbd+unix:///live?socket=$D/nbd.sock" --rw=randwrite --bs=4k \
        --iodepth=8 --offset=2G --size=2G --time_based --runtime="$RT" --fsync="$FSYNC" \
        --percentile_list=50:99:99.9 --output-format=json > "fio-$name.json"
    if [ -n "$loop" ]; then kill $loop; wait $loop 2>/dev/null || true; fi
    python3 - "$name" <<'PY'
import json,sys
n=sys.argv[1]; t=open(f"fio-{n}.json").read(); w=json.loads(t[t.index("{"):])["jobs"][0]["write"]
p=w["clat_ns"]["percentile"]
print(f"{n:>10}: {w['iops']:8.0f} IOPS  p50 {p['50.000000']/1e3:6.0f} us  p99 {p['99.000000']/1e3:6.0f} us  p99.9 {p['99.900000']/1e3:6.0f} us")
PY
}
for FSYNC in 32 0; do
    echo "fsync every $FSYNC writes (0: never)"
    for round in 1 2 3; do
        run none none; run rate200M --rate 200M; run rate50M --rate 50M; run unlimited --rate 0
    done
done
kill -INT $SERVER; wait $SERVER || true
cd / && rm -rf "$D"
