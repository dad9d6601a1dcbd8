#!/usr/bin/env python3
"""The long stress run of issue 8: block stress with a 1000 Hz Guest timer and
console output flowing, while we watch the memory of all three processes.

    .venv/bin/python bench/stress.py [--secs 60] [--hz 1000] [--chatter-ms 100]

The Guest runs `lgtest=blk-stress` over a scratch image with `lghz=` (IRQ 0
re-armed at every expiry) and `lgchatter=` (a console line every few ms),
verifying every sector it reads back; it fails on any request that never
completes (a lost interrupt) or any data error.  From outside we sample the
RSS of the Launcher, the Waker and the block worker with psutil once a
second and print it after warm-up and at the end.

Prints one "stress: key=value ..." line, and exits 1 if the Guest failed.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rss_total(pid):
    """Bytes of RSS of pid and its children (Launcher, Waker, worker)."""
    try:
        p = psutil.Process(pid)
        procs = [p] + p.children(recursive=True)
        return sum(q.memory_info().rss for q in procs), len(procs)
    except psutil.Error:
        return None, 0


def run(secs, hz, chatter_ms, image_mb=8, warmup=5.0):
    """Run the stress Guest; returns a dict of figures (see main())."""
    with tempfile.TemporaryDirectory() as tmp:
        image = os.path.join(tmp, "stress.img")
        with open(image, "wb") as f:
            f.write(os.urandom(image_mb << 20))
        sectors = (image_mb << 20) // 512
        cmd = [sys.executable, os.path.join(ROOT, "launcher.py"), f"--block={image}", "64",
               os.path.join(ROOT, "guest", "guest.elf"), "lgtest=blk-stress",
               f"lgblk=0:{sectors}", f"lgstress_secs={secs}", f"lghz={hz}",
               f"lgchatter={chatter_ms}"]
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        out = []
        reader = threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True)
        reader.start()
        samples = []                       # (seconds since start, rss, nprocs)
        t0 = time.monotonic()
        while proc.poll() is None:
            rss, n = rss_total(proc.pid)
            if rss is not None and n == 3:
                samples.append((time.monotonic() - t0, rss, n))
            time.sleep(1.0)
        reader.join(5)
        err = proc.stderr.read()
        text = "".join(out)
    after = [s for s in samples if s[0] >= warmup]
    final = re.search(r"blk-stress: requests=(\d+) errors=(\d+) irqs=(\d+) verified=(\d+)"
                      r" inflight_max=(\d+) ticks=(\d+)", text)
    chatter = len(re.findall(r"^blk-stress: t=\d+ms", text, re.M))
    res = {
        "passed": "lgtest blk-stress: PASS" in text and proc.returncode == 0,
        "secs": secs,
        "requests": int(final.group(1)) if final else 0,
        "errors": int(final.group(2)) if final else -1,
        "irqs": int(final.group(3)) if final else 0,
        "verified": int(final.group(4)) if final else 0,
        "ticks": int(final.group(6)) if final else 0,
        "console_lines": chatter,
        "rss_warm_mb": after[0][1] / 2**20 if after else 0.0,
        "rss_end_mb": after[-1][1] / 2**20 if after else 0.0,
        "rss_max_mb": max(s[1] for s in after) / 2**20 if after else 0.0,
        "samples": len(after),
        "status": proc.returncode,
        "stdout": text,
        "stderr": err,
    }
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--secs", type=int, default=60)
    ap.add_argument("--hz", type=int, default=1000)
    ap.add_argument("--chatter-ms", type=int, default=100)
    a = ap.parse_args()
    r = run(a.secs, a.hz, a.chatter_ms)
    print("stress: secs=%d requests=%d req_per_s=%.0f errors=%d irqs=%d verified=%d "
          "ticks=%d ticks_per_s=%.0f console_lines=%d rss_after_warmup_mb=%.1f "
          "rss_end_mb=%.1f rss_max_mb=%.1f status=%d %s"
          % (r["secs"], r["requests"], r["requests"] / r["secs"], r["errors"], r["irqs"],
             r["verified"], r["ticks"], r["ticks"] / r["secs"], r["console_lines"],
             r["rss_warm_mb"], r["rss_end_mb"], r["rss_max_mb"], r["status"],
             "PASS" if r["passed"] else "FAIL"))
    if not r["passed"]:
        sys.stderr.write(r["stdout"][-2000:] + r["stderr"][-2000:])
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
