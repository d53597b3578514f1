#!/usr/bin/env python3
"""Peer comparison: rewind serve vs qemu-nbd vs nbdkit (file plugin), driven by fio's nbd engine.

Run it through bench/run.sh (which checks the tools and builds the release binaries).

What it does, in order:
  1. one preallocated raw image per server (fallocate) under DIR, on the same disk; rewind's
     vault (rewind init) next to them; starts the three servers on unix sockets;
  2. prefill: one sequential 1 MiB QD8 write pass over each whole image through its server;
     then `rewind snapshot bench-snap` (the past point of step 4);
  3. rounds: for each round, for each workload, each server in rotating order; before every
     fio job, sync + posix_fadvise(DONTNEED) on every image and every vault file; server CPU
     (utime+stime of the server process) is read around each job. From the second round on,
     rewind starts the round with a fresh vault of its image (rewind init, the prefill pass
     through rewind again, `rewind snapshot bench-snap`): the vault keeps every write (no
     retention yet), and three rounds of it no longer fit on the disk of BENCHMARKS.md.
     --quick keeps one vault for all rounds (its short jobs write little; ~25 s saved);
  4. past point: 4 KiB random read QD32 on rewind's @bench-snap export vs its live export,
     alternating, as many repetitions as rounds;
  5. restore: `rewind snapshot before`, 1% of the blocks rewritten at random, rewind stopped
     (SIGINT), then `rewind restore --at before --in-place` vs `qemu-img convert` of the whole
     image, alternating, caches evicted before each;
  6. read_at (the vault's read-at-point program) after 1k .. 1M records (100k with --quick);
  7. Markdown results: printed and written to DIR/results.md (raw numbers: DIR/results.json).
"""

import argparse
import datetime
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
import traceback

SERVERS = ["qemu-nbd", "nbdkit", "rewind"]
PEERS = ["qemu-nbd", "nbdkit"]
SHORT = {"qemu-nbd": "q", "nbdkit": "k", "rewind": "r"}

# name, title, fio options (besides the common ones), is a write job, target ratio vs faster peer
WORKLOADS = [
    ("randwrite", "4 KiB random write QD32", ["--rw=randwrite", "--bs=4k", "--iodepth=32"], True, 1.0),
    ("seqwrite", "1 MiB sequential write QD8", ["--rw=write", "--bs=1M", "--iodepth=8"], True, 1.0),
    ("randread", "4 KiB random read QD32", ["--rw=randread", "--bs=4k", "--iodepth=32"], False, 0.9),
    ("randrw", "70/30 random read/write 4 KiB QD32",
     ["--rw=randrw", "--rwmixread=70", "--bs=4k", "--iodepth=32"], True, 0.9),
    ("fsync", "4 KiB random write QD32, fsync=32",
     ["--rw=randwrite", "--bs=4k", "--iodepth=32", "--fsync=32"], True, 1.0),
    # Not in the list, and without a target: one pass over the image with a flush
    # at the end, so every server's figure includes getting the data onto the disk.
    ("seqdurable", "1 MiB sequential write QD8, one pass + flush (end_fsync)",
     ["--rw=write", "--bs=1M", "--iodepth=8", "--end_fsync=1"], True, None),
]
# Jobs that write the image once instead of running for --runtime.
ONE_PASS = {"seqdurable"}
PURE_WRITE = ["randwrite", "seqwrite", "fsync"]

CLK_TCK = os.sysconf("SC_CLK_TCK")
GIB = 1 << 30


class Interrupted(Exception):
    pass


_SIGNALLED = []


def on_signal(signum, _frame):
    # the first INT/TERM/HUP interrupts the run; later ones (Ctrl-C reaches this process both
    # from the terminal and through run.sh's trap) must not interrupt the cleanup
    if _SIGNALLED:
        return
    _SIGNALLED.append(signum)
    raise Interrupted(f"signal {signum}")


T0 = time.monotonic()


def log(msg):
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def parse_size(s):
    m = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)(i?B?)?\s*", s, re.I)
    if not m:
        raise SystemExit(f"peer.py: bad size {s!r} (e.g. 2G, 512M)")
    mult = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[m.group(2).upper()]
    return int(m.group(1)) * mult


def human_bytes(n):
    for unit, v in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= v:
            return f"{n / v:.1f} {unit}"
    return f"{n} B"


def fmt_ns(ns):
    if ns is None:
        return "-"
    if ns >= 1e9:
        return f"{ns / 1e9:.2f} s"
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    return f"{ns / 1e3:.0f} µs"


def fmt_num(x, nd=0):
    if x is None:
        return "-"
    return f"{x:,.{nd}f}".replace(",", " ")


def fio_job(out):
    """The first job of fio's JSON output file `out`."""
    with open(out) as f:
        txt = f.read()
    # fio may print non-JSON lines (e.g. "fio: connected to NBD server") before the object
    return json.loads(txt[txt.index("{"):])["jobs"][0]


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def run_out(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
    except Exception as e:  # noqa: BLE001
        return f"({e})"


class Bench:
    def __init__(self, a):
        self.a = a
        self.root = a.root
        self.dir = a.dir
        self.rewind = os.path.join(self.root, "target/release/rewind")
        self.read_at = os.path.join(self.root, "target/release/read_at")
        self.vault = os.path.join(self.dir, "vault")
        self.copy = os.path.join(self.dir, "copy.img")
        self.device = os.path.join(self.dir, "device.img")  # the disk-rate file, removed after each use
        self.img = {s: os.path.join(self.dir, f"{SHORT[s]}.img") for s in SERVERS}
        self.sock = {s: os.path.join(self.dir, f"{SHORT[s]}.sock") for s in SERVERS}
        self.fio_dir = os.path.join(self.dir, "fio")
        self.log_dir = os.path.join(self.dir, "logs")
        self.procs = {}
        self.refills = []
        self.evict_s = 0.0
        self.t0 = time.monotonic()
        self.dead = {}
        self.commands = {}  # kind -> first exact command line
        self.cmdlog = None
        self.res = {"workloads": {}, "prefill": {}, "past": {}, "restore": {}, "read_at": {},
                    "device": [], "notes": []}
        # --quick leaves out the one-pass job (it is not time-bound) to stay under 3 minutes
        self.workloads = [w for w in WORKLOADS if not (a.quick and w[0] in ONE_PASS)]

    # ---- bookkeeping -------------------------------------------------------------------

    def note(self, msg):
        log("NOTE: " + msg)
        self.res["notes"].append(msg)

    def record(self, kind, cmd):
        line = shlex.join(cmd)
        self.commands.setdefault(kind, line)
        self.cmdlog.write(line + "\n")
        self.cmdlog.flush()

    def files_to_evict(self):
        out = [p for p in self.img.values() if os.path.exists(p)]
        if os.path.exists(self.copy):
            out.append(self.copy)
        for d, _dirs, names in os.walk(self.vault):
            for n in names:
                p = os.path.join(d, n)
                if os.path.isfile(p) and not os.path.islink(p):
                    out.append(p)
        return out

    def evict(self):
        """sync, then drop every image and vault file from the page cache."""
        t0 = time.monotonic()
        os.sync()
        for p in self.files_to_evict():
            try:
                fd = os.open(p, os.O_RDONLY)
            except OSError:
                continue  # a segment removed meanwhile
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
        self.evict_s += time.monotonic() - t0

    def remove_big_files(self):
        for p in list(self.img.values()) + [self.copy]:
            if os.path.exists(p):
                os.unlink(p)
        shutil.rmtree(self.vault, ignore_errors=True)

    # ---- servers ------------------------------------------------------------------------

    def server_cmd(self, s):
        if s == "qemu-nbd":
            return ["qemu-nbd", "-f", "raw", "-t", "-k", self.sock[s], self.img[s]]
        if s == "nbdkit":
            return ["nbdkit", "--foreground", "--unix", self.sock[s], "file", self.img[s]]
        return [self.rewind, "serve", "--primary", self.img[s], "--vault", self.vault,
                "--socket", self.sock[s], "--listen", "none"]

    def start(self, s):
        if os.path.exists(self.sock[s]):
            os.unlink(self.sock[s])
        cmd = self.server_cmd(s)
        self.record(f"server {s}", cmd)
        out = open(os.path.join(self.log_dir, f"{s}.log"), "a")
        # own session: a Ctrl-C on the terminal reaches only this script, which stops them
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                             start_new_session=True)
        self.procs[s] = p
        uri = self.uri(s)
        deadline = time.time() + 30
        while True:
            if p.poll() is not None:
                raise RuntimeError(f"{s} exited at start (status {p.returncode}); see "
                                   f"{self.log_dir}/{s}.log")
            if os.path.exists(self.sock[s]):
                r = subprocess.run(["nbdinfo", "--size", uri], capture_output=True, text=True)
                if r.returncode == 0:
                    size = int(r.stdout.strip())
                    if size != self.a.size_bytes:
                        raise RuntimeError(f"{s} exports {size} bytes, expected {self.a.size_bytes}")
                    return
            if time.time() > deadline:
                raise RuntimeError(f"{s} did not accept connections within 30 s")
            time.sleep(0.1)

    def stop(self, s, timeout=120):
        p = self.procs.pop(s, None)
        if p is None or p.poll() is not None:
            return None
        p.send_signal(signal.SIGINT if s == "rewind" else signal.SIGTERM)
        try:
            return p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log(f"{s} did not stop within {timeout} s; killing it")
            p.kill()
            return p.wait()

    def alive(self, s):
        p = self.procs.get(s)
        if p is None:
            return False
        if p.poll() is not None:
            if s not in self.dead:
                self.dead[s] = p.returncode
                self.note(f"{s} exited unexpectedly with status {p.returncode} "
                          f"(log: {self.log_dir}/{s}.log); its later jobs are marked failed")
            return False
        return True

    def cpu_s(self, s):
        p = self.procs.get(s)
        if p is None:
            return None
        try:
            with open(f"/proc/{p.pid}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        # fields 14 (utime) and 15 (stime); rest starts at field 3
        return (int(rest[11]) + int(rest[12])) / CLK_TCK

    def uri(self, s, export=""):
        return f"nbd+unix:///{export}?socket={self.sock[s]}"

    # ---- fio ----------------------------------------------------------------------------

    def fio(self, kind, name, s, opts, out, export="", time_based=True, size=None):
        cmd = ["fio", f"--name={name}", "--ioengine=nbd", f"--uri={self.uri(s, export)}"]
        cmd += opts
        cmd += [f"--size={size or self.a.size_bytes}"]
        if time_based:
            cmd += ["--time_based", f"--runtime={round(self.a.runtime * 1000)}ms"]
        cmd += ["--group_reporting", "--output-format=json", f"--output={out}"]
        self.record(kind, cmd)
        if os.path.exists(out):
            os.unlink(out)
        c0 = self.cpu_s(s)
        t0 = time.monotonic()
        r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=(self.a.runtime if time_based else 0) + 900)
        wall = time.monotonic() - t0
        c1 = self.cpu_s(s)
        if r.returncode != 0 or not os.path.exists(out):
            self.note(f"fio {name} on {s} failed (status {r.returncode}): "
                      f"{(r.stderr or r.stdout).strip()[-300:]}")
            return None
        job = fio_job(out)
        if job.get("error"):
            self.note(f"fio {name} on {s}: job error {job['error']}")
            return None
        res = {"wall_s": wall, "cpu_s": (c1 - c0) if c0 is not None and c1 is not None else None}
        tot_iops = tot_bytes = 0.0
        for d in ("read", "write"):
            x = job[d]
            if x["io_bytes"] == 0:
                continue
            pct = x["clat_ns"].get("percentile", {})
            res[d] = {"iops": x["iops"], "bytes": x["io_bytes"], "bw_mib": x["bw_bytes"] / (1 << 20),
                      "p50": pct.get("50.000000"), "p99": pct.get("99.000000")}
            tot_iops += x["iops"]
            tot_bytes += x["io_bytes"]
        res["iops"] = tot_iops
        res["mib_s"] = sum(res[d]["bw_mib"] for d in ("read", "write") if d in res)
        res["bytes"] = tot_bytes
        res["bytes_written"] = res["write"]["bytes"] if "write" in res else 0
        if res["cpu_s"] is not None and tot_bytes:
            res["cpu_per_gib"] = res["cpu_s"] / (tot_bytes / GIB)
        return res

    def step(self, fn):
        """Run one of the extra measurements; a failure is noted and the run goes on."""
        try:
            fn()
        except Interrupted:
            raise
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            self.note(f"{fn.__name__} failed: {e}")

    # ---- steps --------------------------------------------------------------------------

    def setup(self):
        os.makedirs(self.dir, exist_ok=True)
        # leftovers of an earlier run of this script (only the names it uses)
        for p in list(self.img.values()) + list(self.sock.values()) + [self.copy, self.device]:
            if os.path.exists(p):
                os.unlink(p)
        shutil.rmtree(self.vault, ignore_errors=True)
        for n in ("results.md", "results.json"):
            if os.path.exists(os.path.join(self.dir, n)):
                os.unlink(os.path.join(self.dir, n))
        for d in (self.fio_dir, self.log_dir):
            shutil.rmtree(d, ignore_errors=True)
            os.makedirs(d)
        self.cmdlog = open(os.path.join(self.dir, "commands.log"), "w")
        # three images, the base image and rewind's write log of one round (the vault starts
        # afresh every round: no retention yet; ~2 GiB per second of fio job time per round on
        # the machine of BENCHMARKS.md), the copy of the restore; read_at's 4 GiB vault comes
        # after the images are gone
        rounds_kept = 1 if self.a.fresh_vaults else self.a.rounds
        need = 5 * self.a.size_bytes + self.a.runtime * 2.2 * GIB * rounds_kept + 8 * GIB
        free = shutil.disk_usage(self.dir).free
        log(f"free space in {self.dir}: {human_bytes(free)} (this run needs about {human_bytes(need)})")
        if free < need:
            raise RuntimeError(f"not enough free space in {self.dir}: {human_bytes(free)}, "
                               f"about {human_bytes(need)} needed (try --dir elsewhere, or a "
                               f"smaller --runtime / --size)")
        for s in SERVERS:
            cmd = ["fallocate", "-l", str(self.a.size_bytes), self.img[s]]
            self.record("fallocate", cmd)
            subprocess.run(cmd, check=True)
        cmd = [self.rewind, "init", "--primary", self.img["rewind"], "--vault", self.vault]
        self.record("rewind init", cmd)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        for s in SERVERS:
            self.start(s)
        log("servers up: " + ", ".join(f"{s} pid {self.procs[s].pid}" for s in SERVERS))

    def fresh_vault(self):
        """Gives rewind a new vault of its image, as after the first prefill: rewind init,
        the prefill pass through rewind, `rewind snapshot bench-snap`."""
        status = self.stop("rewind")
        if status not in (0, None):
            self.note(f"rewind serve exited with status {status} on SIGINT before a fresh vault")
        shutil.rmtree(self.vault, ignore_errors=True)
        cmd = [self.rewind, "init", "--primary", self.img["rewind"], "--vault", self.vault]
        self.record("rewind init (fresh vault for the round)", cmd)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        self.start("rewind")
        self.evict()
        out = os.path.join(self.fio_dir, f"refill-{len(self.refills) + 1}.json")
        r = self.fio("prefill", "prefill", "rewind", ["--rw=write", "--bs=1M", "--iodepth=8"],
                     out, time_based=False)
        if not r:
            raise RuntimeError("prefill of a fresh vault failed")
        self.refills.append(r)
        cmd = [self.rewind, "snapshot", "bench-snap", "--vault", self.vault]
        self.record("rewind snapshot", cmd)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        log(f"rewind: fresh vault, prefilled in {r['wall_s']:.1f} s")

    def prefill(self):
        for s in SERVERS:
            self.evict()
            out = os.path.join(self.fio_dir, f"prefill-{s}.json")
            r = self.fio("prefill", "prefill", s, ["--rw=write", "--bs=1M", "--iodepth=8"],
                         out, time_based=False)
            self.res["prefill"][s] = r
            if r:
                log(f"prefill {s}: {r['wall_s']:.1f} s, {r['mib_s']:.0f} MiB/s")
            else:
                raise RuntimeError(f"prefill failed on {s}")
        cmd = [self.rewind, "snapshot", "bench-snap", "--vault", self.vault]
        self.record("rewind snapshot", cmd)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)

    def rounds(self):
        for w in self.workloads:
            self.res["workloads"][w[0]] = {s: [] for s in SERVERS}
        for r in range(self.a.rounds):
            if r > 0 and self.a.fresh_vaults:
                self.fresh_vault()
            for wi, (name, _title, opts, _is_write, _t) in enumerate(self.workloads):
                k = (r + wi) % 3
                order = SERVERS[k:] + SERVERS[:k]
                line = []
                for s in order:
                    if not self.alive(s):
                        self.res["workloads"][name][s].append(None)
                        line.append(f"{s} failed")
                        continue
                    self.evict()
                    out = os.path.join(self.fio_dir, f"r{r + 1}-{name}-{s}.json")
                    res = self.fio(f"job {name}", name, s, opts, out,
                                   time_based=name not in ONE_PASS)
                    self.alive(s)
                    if res:
                        res["round"] = r + 1
                        res["position"] = order.index(s) + 1
                    self.res["workloads"][name][s].append(res)
                    line.append(f"{s} {res['iops']:.0f}" if res else f"{s} failed")
                log(f"round {r + 1}/{self.a.rounds} {name:9} IOPS: " + ", ".join(line))
                if name == "seqwrite":
                    self.step(lambda: self.device_rate(r + 1))

    def device_rate(self, rnd):
        """What the disk itself takes, right after the sequential write jobs: direct 1 MiB
        appends to a new file, as the write log does them (one writer, QD1), and at QD8;
        and direct 1 MiB overwrites of that file once it is written (QD1), the rate a log
        that reuses its space would get (this disk is mounted with `discard`: space a
        deleted file freed is new to the host again)."""
        path = self.device
        size = min(4 * GIB, self.a.size_bytes * 2)
        res = {"round": rnd}
        # (key, engine, depth, new file): "over" rewrites the file "qd1" just wrote.
        kinds = [("qd1", "psync", 1, True), ("over", "psync", 1, False), ("qd8", "libaio", 8, True)]
        if self.a.quick:
            size, kinds = self.a.size_bytes, kinds[:2]
        def remove():
            if os.path.exists(path):
                os.unlink(path)

        try:
            for key, engine, qd, new_file in kinds:
                if new_file:
                    remove()
                self.evict()
                out = os.path.join(self.fio_dir, f"r{rnd}-device-{key}.json")
                cmd = ["fio", "--name=device", f"--filename={path}", "--rw=write", "--bs=1M",
                       f"--ioengine={engine}", f"--iodepth={qd}", "--direct=1",
                       "--fallocate=none", f"--size={size}", "--output-format=json",
                       f"--output={out}"]
                self.record(f"device {key}", cmd)
                r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True,
                                   text=True, timeout=900)
                if r.returncode != 0 or not os.path.exists(out):
                    self.note(f"fio device {key} failed: {(r.stderr or r.stdout).strip()[-300:]}")
                    return
                res[key] = fio_job(out)["write"]["bw_bytes"] / (1 << 20)
        finally:
            remove()
        self.res["device"].append(res)
        log(f"round {rnd}/{self.a.rounds} device: direct 1 MiB appends {res['qd1']:.0f} MiB/s "
            f"(QD1)" + (f", {res['qd8']:.0f} MiB/s (QD8)" if "qd8" in res else "")
            + (f", overwrites {res['over']:.0f} MiB/s (QD1)" if "over" in res else ""))

    def past_point(self):
        s = "rewind"
        runs = {"past": [], "live": []}
        if not self.alive(s):
            self.note("rewind serve is not running: past-point reads skipped")
            return
        # One untimed sequential pass over each export first. The guest page cache is emptied
        # before every job, but a cache outside the guest (the host's, of the virtual disk)
        # is not: the live image was written by the jobs just before, the past point's blocks
        # minutes and tens of GB of log earlier, and on the machine of BENCHMARKS.md that
        # alone made the first past-point job up to 10x slower. The pass gives both sides the
        # same state there; its own rates are reported.
        runs["warmup"] = {}
        for which in ("past", "live"):
            self.evict()
            export = "@bench-snap" if which == "past" else ""
            out = os.path.join(self.fio_dir, f"point-warmup-{which}.json")
            runs["warmup"][which] = self.fio(
                f"point warm-up {which}", f"warmup-{which}", s,
                ["--rw=read", "--bs=1M", "--iodepth=8"], out, export=export, time_based=False)
        w = runs["warmup"]
        if w.get("past") and w.get("live"):
            log(f"past point warm-up pass: past {w['past']['mib_s']:.0f} MiB/s, "
                f"live {w['live']['mib_s']:.0f} MiB/s")
        opts = ["--rw=randread", "--bs=4k", "--iodepth=32"]
        for i in range(self.a.rounds):
            order = ["past", "live"] if i % 2 == 0 else ["live", "past"]
            for which in order:
                self.evict()
                export = "@bench-snap" if which == "past" else ""
                out = os.path.join(self.fio_dir, f"point{i + 1}-{which}.json")
                res = self.fio(f"point {which}", f"randread-{which}", s, opts, out, export=export)
                runs[which].append(res)
            log(f"past point {i + 1}/{self.a.rounds}: past "
                f"{runs['past'][-1]['iops'] if runs['past'][-1] else 0:.0f} IOPS, live "
                f"{runs['live'][-1]['iops'] if runs['live'][-1] else 0:.0f} IOPS")
        self.res["past"] = runs

    def restore(self):
        rr = self.res["restore"]
        if not self.alive("rewind"):
            self.note("rewind serve is not running: restore comparison skipped")
            return
        cmd = [self.rewind, "snapshot", "before", "--vault", self.vault]
        self.record("rewind snapshot", cmd)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        bs = 4096
        nbytes = self.a.size_bytes // 100 // bs * bs
        self.evict()
        out = os.path.join(self.fio_dir, "restore-change-1pct.json")
        # no --norandommap: fio's random map writes each block at most once, so the 1% are
        # distinct blocks
        res = self.fio("restore: change 1%", "change-1pct", "rewind",
                       ["--rw=randwrite", "--bs=4k", "--iodepth=32", f"--io_size={nbytes}"],
                       out, time_based=False)
        rr["changed_bytes"] = res["bytes_written"] if res else None
        # What the dirty region log cost the write path over the whole run.
        st = subprocess.run([self.rewind, "status", "--vault", self.vault, "--json"],
                            capture_output=True, text=True)
        try:
            self.res["drl"] = json.loads(st.stdout).get("dirty_region_log")
        except ValueError:
            self.note(f"rewind status gave no JSON: {st.stderr.strip()}")
        t0 = time.monotonic()
        status = self.stop("rewind")
        rr["serve_stop_s"] = time.monotonic() - t0
        log(f"rewind serve stopped (status {status}) in {rr['serve_stop_s']:.1f} s")
        vb = 0
        for d, _dirs, names in os.walk(self.vault):
            for n in names:
                try:
                    vb += os.lstat(os.path.join(d, n)).st_blocks * 512
                except OSError:
                    pass
        rr["vault_bytes"] = vb
        if status != 0:
            self.note(f"rewind serve exited with status {status} on SIGINT")
        help_txt = subprocess.run([self.rewind, "restore", "--help"], capture_output=True,
                                  text=True).stdout
        in_place = "--in-place" in help_txt
        if not in_place:
            self.note("in-place restore not available (rewind restore has no --in-place)")
        rr["in_place_available"] = in_place
        rr["convert_s"], rr["in_place_s"], rr["in_place_json"] = [], [], []
        for i in range(self.a.rounds):
            kinds = ["convert", "in-place"] if i % 2 == 0 else ["in-place", "convert"]
            for kind in kinds:
                if kind == "convert":
                    if os.path.exists(self.copy):
                        os.unlink(self.copy)
                    self.evict()
                    cmd = ["qemu-img", "convert", "-f", "raw", "-O", "raw", self.img["rewind"],
                           self.copy]
                    self.record("restore: full copy", cmd)
                    t0 = time.monotonic()
                    subprocess.run(cmd, check=True)
                    os.sync()
                    rr["convert_s"].append(time.monotonic() - t0)
                elif in_place:
                    self.evict()
                    cmd = [self.rewind, "restore", "--vault", self.vault, "--at", "before",
                           "--in-place", "--json"]
                    self.record("restore: in place", cmd)
                    t0 = time.monotonic()
                    r = subprocess.run(cmd, capture_output=True, text=True)
                    os.sync()
                    dt = time.monotonic() - t0
                    if r.returncode != 0:
                        self.note(f"rewind restore --in-place failed (status {r.returncode}): "
                                  f"{r.stderr.strip()[-300:]}")
                        rr["in_place_s"].append(None)
                        continue
                    rr["in_place_s"].append(dt)
                    try:
                        rr["in_place_json"].append(json.loads(r.stdout))
                    except ValueError:
                        pass
            log(f"restore {i + 1}/{self.a.rounds}: full copy {rr['convert_s'][-1]:.2f} s"
                + (f", in place {rr['in_place_s'][-1]:.2f} s"
                   if in_place and rr["in_place_s"] and rr["in_place_s"][-1] else ""))
        if os.path.exists(self.copy):
            os.unlink(self.copy)

    def run_read_at(self):
        cmd = [self.read_at, "--dir", self.dir]
        cmd += ["--quick"] if self.a.quick else ["--max-records", "1000000"]
        self.record("read_at", cmd)
        log("read_at: " + shlex.join(cmd))
        r = subprocess.run(cmd, capture_output=True, text=True)
        with open(os.path.join(self.log_dir, "read_at.md"), "w") as f:
            f.write(r.stdout + r.stderr)
        ra = self.res["read_at"]
        if r.returncode != 0:
            self.note(f"read_at failed (status {r.returncode}): {r.stderr.strip()[-300:]}")
            return
        # the "Read at a point" table: | records | point | ... | 4 KiB random p50 / p99 | ...
        header = None
        rows = {}
        for line in r.stdout.splitlines():
            if not line.startswith("|"):
                header = None if not line.strip() else header
                continue
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if "point" in cells and "4 KiB random p50 / p99" in cells:
                header = cells
                continue
            if header and len(cells) == len(header) and cells[1] == "interval end (snapshot)":
                rows[cells[0]] = cells[header.index("4 KiB random p50 / p99")]
        if not rows:
            self.note("read_at: could not find the interval-end rows in its output")
            return
        keys = list(rows)
        first, last = keys[0], keys[-1]
        ra["first"] = (first, rows[first].split("/")[0].strip())
        ra["last"] = (last, rows[last].split("/")[0].strip())
        ra["rows"] = rows

    # ---- report -------------------------------------------------------------------------

    def machine(self):
        m = {}
        m["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        model = ""
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
        m["cpu"] = f"{os.cpu_count()} cores ({model})"
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
        m["memory"] = f"{kb / (1 << 20):.1f} GiB"
        src = run_out(["findmnt", "-no", "SOURCE,FSTYPE,OPTIONS", "-T", self.dir]).split()
        dev = src[0] if src else "?"
        rot = "?"
        base = os.path.basename(dev)
        for cand in (base, re.sub(r"p?\d+$", "", base)):
            pth = f"/sys/block/{cand}/queue/rotational"
            if os.path.exists(pth):
                rot = "rotational" if open(pth).read().strip() == "1" else "non-rotational"
                break
        tot = shutil.disk_usage(self.dir).total
        m["disk"] = (f"{self.dir} on {dev} ({src[1] if len(src) > 1 else '?'}, "
                     f"{human_bytes(tot)}, kernel reports it {rot})")
        m["kernel"] = os.uname().release
        m["load"] = run_out(["cat", "/proc/loadavg"])
        m["versions"] = {
            "qemu-nbd": run_out(["qemu-nbd", "--version"]).splitlines()[0],
            "nbdkit": run_out(["nbdkit", "--version"]),
            "fio": run_out(["fio", "--version"]),
            "qemu-img": run_out(["qemu-img", "--version"]).splitlines()[0],
            "libnbd (nbdinfo)": run_out(["nbdinfo", "--version"]).splitlines()[0],
            "rewind": run_out([self.rewind, "--version"]),
        }
        rev = run_out(["git", "-C", self.root, "rev-parse", "--short", "HEAD"])
        dirty = run_out(["git", "-C", self.root, "status", "--porcelain", "--", "crates"])
        m["git"] = rev + (" + uncommitted changes in crates/" if dirty else "")
        m["git_rev"] = rev
        m["built"] = datetime.datetime.fromtimestamp(
            os.stat(self.rewind).st_mtime, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        return m

    def report(self, m_start, t_total):
        a = self.a
        L = []
        L.append("## Peer comparison: rewind serve vs qemu-nbd vs nbdkit")
        L.append("")
        L.append(f"Date: {m_start['date']}. Machine: {m_start['cpu']}, {m_start['memory']} memory, "
                 f"{m_start['disk']}, kernel {m_start['kernel']}. Source: git {m_start['git']}. "
                 f"Load average at start: {m_start['load']}; at end: {run_out(['cat', '/proc/loadavg'])}.")
        rev_end = run_out(["git", "-C", self.root, "rev-parse", "--short", "HEAD"])
        built_end = datetime.datetime.fromtimestamp(
            os.stat(self.rewind).st_mtime, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        if rev_end != m_start["git_rev"] or built_end != m_start["built"]:
            L.append("")
            L.append(f"(During the run HEAD moved to {rev_end}; target/release/rewind was built "
                     f"{m_start['built']} at the start and {built_end} at the end"
                     + ("; it was rebuilt during the run, so commands after that used the new "
                        "binary, while the server kept the old one." if built_end != m_start["built"]
                        else ", so every command used the binaries built at the start.") + ")")
        L.append("")
        L.append("Versions: " + "; ".join(f"{k}: `{v}`" for k, v in m_start["versions"].items()) + ".")
        L.append("")
        L.append(f"Run: image size {human_bytes(a.size_bytes)} per server, {a.rounds} rounds, "
                 f"{a.runtime:g} s per fio job{' (--quick)' if a.quick else ''}; "
                 f"whole run {t_total / 60:.1f} min. Figures are medians over the rounds; each "
                 "round runs every workload on the three servers in rotating order, and before "
                 "every job all images and vault files are synced and dropped from the page "
                 "cache (posix_fadvise DONTNEED). " +
                 ("rewind starts every round after the first "
                  "with a fresh vault (rewind init, one prefill pass through rewind, snapshot "
                  "bench-snap), so its vault holds the prefill and at most one round of jobs "
                  "(no retention yet); the past point and restore use the last round's vault."
                  if a.fresh_vaults else
                  "rewind keeps one vault for all rounds (--quick), so its vault holds the "
                  "prefill and every round's jobs."))
        L.append("")
        L.append("| workload | server | IOPS | MiB/s | clat p50 | clat p99 | server CPU s/GiB | rewind / faster peer (IOPS) | target | per-round IOPS |")
        L.append("|---|---|---:|---:|---:|---:|---:|---:|---|---|")
        summary = []
        for name, title, _o, _w, target in self.workloads:
            runs = self.res["workloads"].get(name, {})
            medians = {}
            for s in SERVERS:
                rs = runs.get(s, [])
                ok = [x for x in rs if x]
                mi = med([x["iops"] for x in ok])
                medians[s] = mi
                mb = med([x["mib_s"] for x in ok])
                if name == "randrw":
                    p50 = "r " + fmt_ns(med([x["read"]["p50"] for x in ok if "read" in x])) + \
                          " · w " + fmt_ns(med([x["write"]["p50"] for x in ok if "write" in x]))
                    p99 = "r " + fmt_ns(med([x["read"]["p99"] for x in ok if "read" in x])) + \
                          " · w " + fmt_ns(med([x["write"]["p99"] for x in ok if "write" in x]))
                else:
                    d = "read" if name == "randread" else "write"
                    p50 = fmt_ns(med([x[d]["p50"] for x in ok if d in x]))
                    p99 = fmt_ns(med([x[d]["p99"] for x in ok if d in x]))
                cpu = med([x.get("cpu_per_gib") for x in ok])
                per = " / ".join(f"{x['iops']:.0f}" if x else "failed" for x in rs)
                ratio = tgt = ""
                if s == "rewind":
                    peers = {p: medians[p] for p in PEERS if medians.get(p)}
                    fp = max(peers, key=peers.get) if peers else None
                    if mi and fp and target is None:
                        ratio = f"{mi / peers[fp]:.2f}× ({fp})"
                        tgt = "none (reported)"
                    elif mi and fp:
                        rv = mi / peers[fp]
                        ratio = f"**{rv:.2f}×** ({fp})"
                        met = rv >= target
                        tgt = f"≥ {target:.1f}×: {'met' if met else 'missed'}"
                        summary.append((title, f"rewind / faster peer ≥ {target:.1f}×",
                                        f"{rv:.2f}× ({fp})", met))
                    elif target is not None:
                        summary.append((title, f"rewind / faster peer ≥ {target:.1f}×", "failed", False))
                L.append(f"| {title if s == SERVERS[0] else ''} | {s} | {fmt_num(mi)} | "
                         f"{fmt_num(mb, 1)} | {p50} | {p99} | {fmt_num(cpu, 2)} | {ratio} | {tgt} | {per} |")
        L.append("")
        L.append("*server CPU s/GiB*: user+system CPU seconds of the server process during the "
                 "job (/proc/PID/stat, all threads) per GiB moved by fio (read + written). "
                 "For the 70/30 job, clat percentiles are given for reads (r) and writes (w). "
                 "The one-pass job writes the image once and flushes (fio `end_fsync=1`); its "
                 "figures include the flush, and it has no target.")
        L.append("")
        dev = [d for d in self.res["device"] if "qd1" in d]
        if dev:
            def rate(key):
                """Median over the rounds of one disk-rate kind, and the per-round list."""
                xs = [d[key] for d in dev if key in d]
                return med(xs), " / ".join(f"{x:.0f}" for x in xs)

            (d1, per1), (d8, per8), (dov, perov) = rate("qd1"), rate("qd8"), rate("over")
            L.append("### The disk's own rate, measured after the sequential write jobs of each round")
            L.append("")
            L.append(f"fio direct 1 MiB writes appended to a new file on the same disk (the write "
                     f"log's pattern): **{d1:.0f} MiB/s** with one writer at QD1 (as rewind's "
                     f"log writer)" + (f", {d8:.0f} MiB/s at QD8 (libaio)" if d8 else "")
                     + f"; per round QD1 {per1}" + (f", QD8 {per8}" if d8 else "") + " MiB/s."
                     + (f" Overwriting that file once written (QD1): **{dov:.0f} MiB/s** (per "
                        f"round {perov} MiB/s), what a log that reuses its own space would get."
                        if dov else ""))
            seq = self.res["workloads"].get("seqwrite", {})
            parts = []
            for s in SERVERS:
                mb = med([x["mib_s"] for x in seq.get(s, []) if x])
                if mb:
                    parts.append(f"{s} {mb / d1:.2f}×" + (f" ({mb / dov:.2f}× the overwrite rate)"
                                                          if dov else ""))
            if parts:
                L.append(f"The 1 MiB sequential write job against that QD1 rate: "
                         + ", ".join(parts) + ". A journal has to get every byte onto the disk "
                         "while the job runs; a server of a plain image that fits under the "
                         "kernel's dirty-page thresholds does not (its writes stay in the page "
                         "cache until after the job).")
            L.append("")

        # CPU per GiB written over the pure write jobs
        L.append("### Server CPU per GiB written (all rounds of the 4 KiB random write, 1 MiB "
                 "sequential write and fsync=32 jobs)")
        L.append("")
        L.append("| server | CPU s | GiB written | CPU s / GiB written | vs rewind |")
        L.append("|---|---:|---:|---:|---:|")
        cpu_tot = {}
        for s in SERVERS:
            c = g = 0.0
            for name in PURE_WRITE:
                for x in self.res["workloads"].get(name, {}).get(s, []):
                    if x and x.get("cpu_s") is not None:
                        c += x["cpu_s"]
                        g += x["bytes_written"] / GIB
            cpu_tot[s] = (c, g, c / g if g else None)
        for s in SERVERS:
            c, g, per = cpu_tot[s]
            rv = cpu_tot["rewind"][2]
            vs = f"{rv / per:.2f}×" if per and rv and s != "rewind" else ""
            L.append(f"| {s} | {c:.1f} | {g:.1f} | {fmt_num(per, 2)} | {vs} |")
        L.append("")
        L.append("(*vs rewind*: rewind's CPU per GiB divided by that server's.)")
        L.append("")

        # past point, restore, read_at
        L.append("### Point-in-time reads and restore")
        L.append("")
        L.append("| measurement | rewind | reference | ratio | target |")
        L.append("|---|---:|---:|---:|---|")
        past = self.res.get("past") or {}
        if past.get("past") and past.get("live"):
            pi = med([x["iops"] for x in past["past"] if x])
            li = med([x["iops"] for x in past["live"] if x])
            pp50 = med([x["read"]["p50"] for x in past["past"] if x])
            lp50 = med([x["read"]["p50"] for x in past["live"] if x])
            if pi and li:
                rv = pi / li
                met = rv >= 0.7
                per_p = " / ".join(f"{x['iops']:.0f}" if x else "failed" for x in past["past"])
                per_l = " / ".join(f"{x['iops']:.0f}" if x else "failed" for x in past["live"])
                L.append(f"| 4 KiB random read QD32, past point `@bench-snap` vs `live` (IOPS; "
                         f"p50) | {fmt_num(pi)} ({fmt_ns(pp50)}) | {fmt_num(li)} ({fmt_ns(lp50)}) "
                         f"| **{rv:.2f}×** | ≥ 0.7×: {'met' if met else 'missed'} |")
                summary.append(("past point random read", "past / live ≥ 0.7×", f"{rv:.2f}×", met))
                past_note = f"per-round IOPS past {per_p}, live {per_l}"
                w = past.get("warmup") or {}
                if w.get("past") and w.get("live"):
                    past_note += (f" (after one untimed sequential 1 MiB pass over each export, "
                                  f"which ran at {w['past']['mib_s']:.0f} MiB/s past and "
                                  f"{w['live']['mib_s']:.0f} MiB/s live)")
            else:
                past_note = "failed"
        else:
            L.append("| past point vs live | - | - | - | not measured |")
            past_note = "not measured"
        rr = self.res.get("restore") or {}
        cs = med(rr.get("convert_s", []))
        ips = med(rr.get("in_place_s", []))
        chg = rr.get("changed_bytes")
        if not rr.get("in_place_available", True):
            L.append(f"| restore of a point 1% back | in-place restore not available | "
                     f"{cs:.2f} s | - | not measured |" if cs else
                     "| restore of a point 1% back | in-place restore not available | - | - | not measured |")
            summary.append(("restore 1% changed", "≥ 10× faster than a full copy",
                            "in-place restore not available", None))
        elif cs and ips:
            rv = cs / ips
            met = rv >= 10
            L.append(f"| restore of a point with 1% of blocks changed since ({human_bytes(chg or 0)}): "
                     f"`rewind restore --in-place` vs `qemu-img convert` of the whole image (s) | "
                     f"{ips:.2f} s | {cs:.2f} s | **{rv:.1f}× faster** | ≥ 10×: "
                     f"{'met' if met else 'missed'} |")
            summary.append(("restore 1% changed", "≥ 10× faster than a full copy",
                            f"{rv:.1f}×", met))
        else:
            L.append("| restore of a point 1% back | failed | - | - | not measured |")
        ra = self.res.get("read_at") or {}
        if ra.get("first") and ra.get("last"):
            L.append(f"| read_at: 4 KiB random read p50 at the interval-end point, "
                     f"{ra['last'][0]} records vs {ra['first'][0]} | {ra['last'][1]} | "
                     f"{ra['first'][1]} | | (reported, no target) |")
        L.append("")
        times = []
        if rr.get("convert_s"):
            times.append("full copy " + " / ".join(f"{x:.2f}" for x in rr["convert_s"]) + " s")
        if rr.get("in_place_s"):
            times.append("in place " + " / ".join(f"{x:.2f}" if x else "failed"
                                                  for x in rr["in_place_s"]) + " s")
        ij = rr.get("in_place_json") or []
        extra = ""
        if ij:
            extra = (f"; the restore reported {ij[0].get('blocks_changed_since')} blocks changed "
                     f"since the point (seq {ij[0].get('seq')}) and "
                     f"{human_bytes(ij[0].get('bytes_written', 0))} written, in "
                     + " / ".join(f"{x.get('seconds', 0):.2f}" for x in ij) + " s by its own count")
        if rr.get("vault_bytes"):
            extra += f"; the vault held {human_bytes(rr['vault_bytes'])} on disk"
        L.append(f"Past point: {past_note}. Restore: per-round times {', '.join(times) or '-'}"
                 f"{extra}; both times include a `sync` after the command. "
                 f"rewind serve took {rr.get('serve_stop_s', 0):.1f} s to stop on SIGINT.")
        L.append("")

        drl = self.res.get("drl")
        if drl:
            write_s = sum((j or {}).get("wall_s") or 0
                          for runs in self.res["workloads"].values()
                          for j in runs.get("rewind", []))
            share = f" ({100 * drl['mark_wait_seconds'] / write_s:.2f}% of rewind's fio job time)" \
                if write_s else ""
            L.append(f"Dirty region log over the whole run ({human_bytes(drl['region_size'])} "
                     f"regions): {drl['file_writes']} writes of the DRL file; writes waited "
                     f"{drl['mark_wait_seconds'] * 1000:.1f} ms in all for their region to be "
                     f"marked on disk{share}.")
            L.append("")

        pre = self.res.get("prefill") or {}
        if pre:
            L.append("Prefill (one sequential 1 MiB QD8 pass over the whole image, not "
                     "time-based): " + ", ".join(
                         f"{s} {pre[s]['mib_s']:.0f} MiB/s ({pre[s]['wall_s']:.1f} s)"
                         for s in SERVERS if pre.get(s)) + ".")
            L.append("")

        L.append("### Targets")
        L.append("")
        L.append("| workload | target | measured | |")
        L.append("|---|---|---:|---|")
        for t, tgt, v, met in summary:
            L.append(f"| {t} | {tgt} | {v} | {'met' if met else ('not measured' if met is None else 'missed')} |")
        L.append("")
        if self.res["notes"]:
            L.append("### Notes from the run")
            L.append("")
            for n in self.res["notes"]:
                L.append(f"- {n}")
            L.append("")
        L.append("### Commands")
        L.append("")
        L.append("```sh")
        L.append(" ".join(["bench/run.sh"] + [shlex.quote(x) for x in a.argv]))
        L.append("")
        for k, v in self.commands.items():
            L.append(f"# {k}")
            L.append(v)
        L.append("```")
        L.append("")
        L.append("fio jobs: the command above for one server and round; the other servers "
                 "differ only in the socket (" + ", ".join(
                     f"{s}: `{self.sock[s]}`" for s in SERVERS) + ") and the --output file. "
                 "Before every fio job, prefill, copy and restore: `sync`, then "
                 "`posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED)` on every image, the copy and "
                 "every file under the vault. All commands in order: "
                 f"`{os.path.join(self.dir, 'commands.log')}`.")
        L.append("")
        return "\n".join(L)


def main():
    ap = argparse.ArgumentParser(prog="bench/run.sh")
    ap.add_argument("--root", required=True)
    ap.add_argument("--size")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runtime", type=float)
    ap.add_argument("--dir")
    ap.add_argument("--keep", action="store_true")
    argv = sys.argv[1:]
    a = ap.parse_args(argv)
    # the flags as the user gave them (for the report)
    a.argv = [x for i, x in enumerate(argv)
              if not (x == "--root" or (i > 0 and argv[i - 1] == "--root"))]
    if a.rounds < 3:
        ap.error("--rounds must be at least 3")
    a.size_bytes = parse_size(a.size or ("1G" if a.quick else "2G"))
    if a.size_bytes % (1 << 20):
        ap.error("--size must be a multiple of 1 MiB")
    a.runtime = a.runtime or (1.5 if a.quick else 15)
    # a fresh vault per round keeps the journal of one round on the disk at a time; --quick
    # writes little and saves the refills' time (~25 s of its < 3 min)
    a.fresh_vaults = not a.quick
    if a.runtime < 1:
        ap.error("--runtime must be at least 1 (seconds)")
    a.dir = os.path.abspath(a.dir or os.path.join(a.root, "target/bench-run"))

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, on_signal)

    b = Bench(a)
    t0 = time.monotonic()
    rc = 0
    try:
        b.setup()
        m_start = b.machine()
        b.prefill()
        b.rounds()
        for step in (b.past_point, b.restore):
            b.step(step)
        for s in list(b.procs):
            b.stop(s)
        if not a.keep:
            b.remove_big_files()  # room for read_at's vault
        b.step(b.run_read_at)
        log(f"time spent in sync + cache eviction: {b.evict_s:.1f} s")
        text = b.report(m_start, time.monotonic() - t0)
        print(text)
        with open(os.path.join(a.dir, "results.md"), "w") as f:
            f.write(text)
        with open(os.path.join(a.dir, "results.json"), "w") as f:
            json.dump({"machine": m_start, "args": {k: v for k, v in vars(a).items()},
                       "results": b.res, "commands": b.commands}, f, indent=1, default=str)
        log(f"results: {os.path.join(a.dir, 'results.md')} "
            f"(whole run {time.monotonic() - t0:.0f} s)")
    except Interrupted as e:
        log(f"interrupted ({e}); stopping servers")
        rc = 130
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        log(f"peer.py: error: {e}")
        rc = 1
    finally:
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        for s in list(b.procs):
            try:
                b.stop(s, timeout=60)
            except Exception as e:  # noqa: BLE001
                log(f"stopping {s}: {e}")
        if not a.keep:
            b.remove_big_files()
        # an interrupted disk-rate measurement leaves its file behind; it is never kept
        if os.path.exists(b.device):
            os.unlink(b.device)
        for p in b.sock.values():
            if os.path.exists(p):
                os.unlink(p)
    return rc


if __name__ == "__main__":
    sys.exit(main())
