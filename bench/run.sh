#!/usr/bin/env bash
# Peer comparison benchmark: rewind serve vs qemu-nbd vs nbdkit (file plugin), driven by fio's
# nbd engine over unix sockets. A program, not a test; results go to BENCHMARKS.md.
#
#   bench/run.sh [--size 2G] [--quick] [--rounds N] [--dir DIR] [--runtime S] [--keep]
#
# This wrapper checks the tools, builds release binaries, then runs bench/peer.py, which starts
# the servers, runs the jobs, prints the Markdown results and writes DIR/results.md. peer.py
# stops every server it started on exit (normal end, error, Ctrl-C or SIGTERM; the trap below
# forwards TERM/HUP) and removes the images and the vault unless --keep.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() {
  cat <<'EOF'
bench/run.sh: rewind serve vs qemu-nbd vs nbdkit over NBD (fio, nbd engine)

USAGE: bench/run.sh [FLAGS]

FLAGS:
  --size SIZE     size of each server's image (default 2G; 1G with --quick)
  --quick         short jobs (1.5 s) on 1G images, read_at --quick, no one-pass job,
                  one vault for all rounds: a smoke run, < 3 min
  --rounds N      alternating rounds per workload (default 3, at least 3)
  --runtime S     seconds per fio job (default 15; 1.5 with --quick)
  --dir DIR       work directory: images, vault, logs, results (default ./target/bench-run);
                  it must be on the disk you want to measure
  --keep          keep the images and the vault afterwards
  --no-build      skip `cargo build --release -p rewind-cli -p rewind-bench`
  -h, --help      this text

Needs: qemu-nbd and qemu-img (qemu-utils), nbdkit with its file plugin, fio with the nbd
engine, nbdinfo (libnbd-bin), python3, fallocate, cargo.
Results: printed as Markdown and written to DIR/results.md (raw numbers in DIR/results.json,
fio output in DIR/fio/, server logs in DIR/logs/).
EOF
}

build=1
args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --no-build) build=0; shift ;;
    --dir)
      [[ $# -ge 2 ]] || { echo "run.sh: --dir needs a value" >&2; exit 2; }
      # make --dir absolute relative to the caller's directory (peer.py runs from the repo root)
      d="$2"; [[ "$d" = /* ]] || d="$PWD/$d"
      args+=(--dir "$d"); shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done

missing=()
need() { command -v "$1" >/dev/null 2>&1 || missing+=("$1 ($2)"); }
need qemu-nbd "apt-get install qemu-utils"
need qemu-img "apt-get install qemu-utils"
need nbdkit "apt-get install nbdkit"
need fio "apt-get install fio"
need nbdinfo "apt-get install libnbd-bin"
need python3 "apt-get install python3"
need fallocate "apt-get install util-linux"
need cargo "https://rustup.rs"
if [[ ${#missing[@]} -eq 0 ]]; then
  nbdkit file --version >/dev/null 2>&1 || missing+=("nbdkit file plugin (apt-get install nbdkit)")
  fio --enghelp=nbd >/dev/null 2>&1 || missing+=("fio nbd engine (a fio built with libnbd: apt-get install fio)")
fi
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "run.sh: missing tools:" >&2
  printf '  %s\n' "${missing[@]}" >&2
  echo "(scripts/test.sh installs all of them on Debian/Ubuntu)" >&2
  exit 1
fi

cd "$ROOT"
if [[ $build -eq 1 ]]; then
  echo "+ cargo build --release -p rewind-cli -p rewind-bench" >&2
  cargo build --release -p rewind-cli -p rewind-bench
fi

# peer.py stops the servers it started when it ends or gets INT/TERM/HUP; this trap passes
# signals sent to run.sh on to it.
child=
forward() { [[ -n "$child" ]] && kill -TERM "$child" 2>/dev/null; }
trap forward TERM HUP INT
python3 "$ROOT/bench/peer.py" --root "$ROOT" "${args[@]}" &
child=$!
rc=0
while :; do
  wait "$child" && rc=0 || rc=$?
  kill -0 "$child" 2>/dev/null || break   # wait returned because of a trapped signal
done
echo "run.sh: done in ${SECONDS} s (build included), exit status $rc" >&2
exit "$rc"
