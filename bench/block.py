#!/usr/bin/env python3
"""Block device benchmark (issue 6): how fast the Guest's disk is, beside
what the host itself gets from the same file, and what each request costs
in BREAKs, kicks and done-pipe traffic.

    .venv/bin/python bench/block.py [--mb 64] [--secs 1] [--no-guest]

Three measurements, all on one image file (random data, page cache warm):

1. host:   this process's own preadv() on the file: sequential 64 KiB and
           random 4 KiB, queue depth 1.  The ceiling.
2. worker: the Launcher's block device with its real I/O worker process,
           driven by requests that Python puts in the vring (no Host, no
           Guest): what devices/block.py costs by itself, at queue depth 1
           and with 32 requests per kick.
3. guest:  our Guest's `lgtest=blk-bench` through launcher.py, the whole
           path (Guest driver, NOTIFY, worker, done pipe, Waker, BREAK,
           interrupt).  It prints seq64k_mbs, seq64k_qd32_mbs, rand4k_qd1_iops and
           rand4k_qd32_iops; we add the counters from waker/stats.py.

Prints one "name: key=value ..." line per measurement.
"""

import argparse
import os
import random
import re
import select
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))


def make_image(path, mb):
    rnd = random.Random(2026)
    with open(path, "wb") as f:
        for _ in range(mb):
            f.write(rnd.randbytes(1 << 20))


def host_preadv(path, secs):
    """The host's own speed on the file: (seq64k MB/s, rand4k qd1 IOPS)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        buf = bytearray(65536)
        # Warm the cache the way the Guest's first pass would.
        off = 0
        while off < size:
            os.preadv(fd, [buf], off)
            off += 65536
        t0 = time.perf_counter()
        off = 0
        while off < size:
            os.preadv(fd, [buf], off)
            off += 65536
        seq = size / (time.perf_counter() - t0) / 1e6
        small = memoryview(bytearray(4096))
        rnd = random.Random(1)
        blocks = size // 4096
        n = 0
        t0 = time.perf_counter()
        deadline = t0 + secs
        while time.perf_counter() < deadline:
            for _ in range(256):
                os.preadv(fd, [small], rnd.randrange(blocks) * 4096)
            n += 256
        iops = n / (time.perf_counter() - t0)
        return seq, iops
    finally:
        os.close(fd)


def worker_bench(path, secs):
    """The block device and its worker alone, fed from Python.  Returns
    {qd1_iops, qd32_iops, per-request counters}."""
    from devices.abi import VIRTIO_BLK_T_IN
    from devices.block import handle_io_finish, setup_block_file
    from devices.devpage import DeviceList
    from devices.memory import GuestMemory
    from conftest import FakeLg, GuestRing          # the Guest-side vring helpers
    from waker.stats import STATS

    mem = GuestMemory(16 << 20)
    devices = DeviceList(mem)
    dev = setup_block_file(devices, path)
    vq = dev.vqs[0]
    lg = FakeLg()
    lg.dropped = _Counter()
    ring = GuestRing(mem, vq)
    size = os.path.getsize(path)
    blocks = size // 4096
    rnd = random.Random(3)
    # 32 fixed request slots of 3 descriptors each: header, data, status.
    slots = []
    for k in range(32):
        hdr = 0x100000 + k * 64
        data = 0x200000 + k * 4096
        status = hdr + 32
        d = 3 * k
        ring.set_desc(d, hdr, 16, 1, d + 1)
        ring.set_desc(d + 1, data, 4096, 3, d + 2)
        ring.set_desc(d + 2, status, 1, 2, 0)
        slots.append((d, hdr))

    def run(depth):
        done = 0
        before = STATS.read()
        t0 = time.perf_counter()
        deadline = t0 + secs
        inflight = 0
        while True:
            # A batch of depth requests, one kick, wait for them all.
            if inflight == 0 and time.perf_counter() < deadline:
                for d, hdr in slots[:depth]:
                    struct.pack_into("<IIQ", mem.view, hdr, VIRTIO_BLK_T_IN, 0,
                                     rnd.randrange(blocks) * 8)
                    ring.offer(d)
                    inflight += 1
                devices.handle_output(lg, vq.pfn << 12)
            if not inflight:
                break
            if not select.select([dev.fd], [], [], 10)[0]:
                raise RuntimeError(
                    "worker bench stalled: inflight=%d last_used=%d used=%d "
                    "avail=%d worker_last_avail? stats=%s"
                    % (inflight, ring.last_used, ring.used_idx(),
                       ring.avail_idx(), STATS.read()))
            handle_io_finish(lg, dev)
            got = len(ring.get_used())
            inflight -= got
            done += got
        t = time.perf_counter() - t0
        after = STATS.read()
        delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        return done / t, done, delta

    qd1, n1, _ = run(1)
    qd32, n32, delta = run(32)
    os.close(dev.priv.workpipe)
    return qd1, qd32, n32, delta


class _Counter:
    """Stands in for FakeLg.dropped: counts drop_translations calls."""

    def __init__(self):
        self.n = 0

    def append(self, _item):
        self.n += 1


def guest_bench(path, secs, timeout):
    """Run the Guest's blk-bench; returns (figures dict, stats dict) or
    (None, reason)."""
    launcher = os.path.join(ROOT, "launcher.py")
    guest = os.path.join(ROOT, "guest", "guest.elf")
    if not os.path.exists(os.path.join(ROOT, "host", "__init__.py")):
        return None, "host/ is not there yet"
    if not os.path.exists(guest):
        r = subprocess.run(["make", "-s", "-C", os.path.join(ROOT, "guest")],
                           capture_output=True, text=True)
        if r.returncode or not os.path.exists(guest):
            return None, "guest/guest.elf doesn't build"
    with tempfile.NamedTemporaryFile(prefix="lgstats-", delete=False) as f:
        stats_path = f.name
    env = dict(os.environ, PYLGUEST_STATS=stats_path)
    try:
        proc = subprocess.run(
            [sys.executable, launcher, "--block=%s" % path, "64", guest,
             "lgtest=blk-bench", "lgblk=0:8", "lgbench_secs=%d" % secs],
            stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=timeout, cwd=ROOT, env=env)
    except subprocess.TimeoutExpired:
        os.unlink(stats_path)
        return None, "the Guest took more than %d s" % timeout
    from waker.stats import read_file
    stats = read_file(stats_path)
    os.unlink(stats_path)
    m = re.search(r"blk-bench: (.*)", proc.stdout)
    if not m:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
        return None, "no blk-bench line (exit %d): %s" % (proc.returncode,
                                                          " | ".join(tail))
    figures = dict(kv.split("=", 1) for kv in m.group(1).split())
    return figures, stats


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=int, default=64, help="image size (MiB)")
    ap.add_argument("--secs", type=int, default=1, help="seconds per random test")
    ap.add_argument("--no-guest", action="store_true", help="skip the Guest run")
    ap.add_argument("--timeout", type=int, default=300)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="blkbench-") as tmp:
        # Our own counters for the worker run (waker/stats.py maps this
        # file when it is first imported, below).
        os.environ["PYLGUEST_STATS"] = os.path.join(tmp, "worker.stats")
        img = os.path.join(tmp, "bench.img")
        make_image(img, args.mb)

        seq, iops = host_preadv(img, args.secs)
        print("host: seq64k_mbs=%.1f rand4k_qd1_iops=%d" % (seq, iops), flush=True)

        qd1, qd32, n32, delta = worker_bench(img, args.secs)
        req = max(delta.get("blk_requests", 0), 1)
        print("worker: rand4k_qd1_iops=%d rand4k_qd32_iops=%d "
              "done_bytes_per_req=%.1f done_writes_per_req=%.2f "
              "kicks_per_req=%.3f wakeups_per_req=%.3f"
              % (qd1, qd32, delta.get("blk_done_bytes", 0) / req,
                 delta.get("blk_done_writes", 0) / req,
                 delta.get("blk_kicks", 0) / req,
                 delta.get("blk_wakeups", 0) / req) if delta else
              "worker: rand4k_qd1_iops=%d rand4k_qd32_iops=%d (set "
              "PYLGUEST_STATS=<file> for per-request counters)" % (qd1, qd32),
              flush=True)

        if args.no_guest:
            return 0
        for label in ("guest",):
            figures, stats = guest_bench(img, args.secs, args.timeout)
            if figures is None:
                print("%s: not run: %s" % (label, stats), flush=True)
                continue
            req = max(stats.get("blk_requests", 0), 1)
            print("%s: seq64k_mbs=%s seq64k_qd32_mbs=%s rand4k_qd1_iops=%s rand4k_qd32_iops=%s "
                  "requests=%d breaks_per_req=%.3f irqs_per_req=%.3f "
                  "done_writes_per_req=%.3f done_bytes_per_req=%.1f "
                  "kicks_per_req=%.3f"
                  % (label, figures.get("seq64k_mbs"), figures.get("seq64k_qd32_mbs"),
                     figures.get("rand4k_qd1_iops"),
                     figures.get("rand4k_qd32_iops"), stats.get("blk_requests", 0),
                     stats.get("breaks", 0) / req, stats.get("blk_irqs", 0) / req,
                     stats.get("blk_done_writes", 0) / req,
                     stats.get("blk_done_bytes", 0) / req,
                     stats.get("blk_kicks", 0) / req), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
