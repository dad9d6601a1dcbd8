#!/usr/bin/env python3
"""What --stats and --trace cost a Linux boot (issue 17).

    .venv/bin/python bench/trace_cost.py [--runs N] [--kernel K]

First the hot paths: the CPU time of a hypercall round trip and of a trap delivered to
ring 3 (bench/hypercall.py's tiny Guest straight on the Host), median of --runs
processes per mode, each mode in a fresh process (the options are global).  CPU time,
not wall time: on a shared machine the wall clock measures the neighbours.

Then boots the same Linux Guest (64 MiB, a copy of images/disk.img as /dev/vda, the
project's initramfs, console=hvc0, pyl.end=poweroff) with neither option, with
--stats, and with --trace, round-robin, --runs times each, and prints per mode the
median of:

  init       wall seconds from starting the Launcher to /init's first line
  exit       wall seconds to the Launcher's exit (the trace is written by then)
  cpu        CPU seconds (user + system) the Launcher and its children used

and each median over the "neither" one from the same run, with the trace's size.
The machine is shared and noisy: the runs interleave so that load hits every mode
alike, and medians say more than means.  Without ../shared/linux (or --kernel) it
says so in one line and exits 0.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bench.linux_guest import initramfs  # noqa: E402

SHARED = os.path.join(os.path.dirname(ROOT), "shared", "linux")
MODES = ("neither", "--stats", "--trace")


def boot(kernel, initrd, disk, extra):
    """One boot; returns (seconds to "pyl: init", seconds to exit, CPU seconds)."""
    argv = [sys.executable, os.path.join(ROOT, "launcher.py"), *extra,
            "--block=%s" % disk, "--initrd=%s" % initrd, "64", kernel, "console=hvc0",
            "pyl.end=poweroff"]
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    t_init = None
    for line in proc.stdout:
        if t_init is None and line.startswith(b"pyl: init uptime="):
            t_init = time.monotonic() - t0
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    t_exit = time.monotonic() - t0
    if proc.returncode != 0 or t_init is None:
        raise SystemExit("bench: the Guest did not boot and power off (status %s, %s)"
                         % (proc.returncode, " ".join(extra) or "neither option"))
    return t_init, t_exit, ru.ru_utime + ru.ru_stime


def hot_paths(mode):
    """In a process of its own: (CPU seconds per hypercall, per trap) with mode on."""
    sys.path.insert(0, os.path.join(ROOT, "tests", "guests"))
    import lgtrace
    from harness import GuestDied, TinyGuest
    if mode == "--stats":
        lgtrace.start(stats=True)
    elif mode == "--trace":
        fd, path = tempfile.mkstemp(prefix="pylguest-trace-cost-")
        os.unlink(path)
        lgtrace.start(fd, limit=100_000)

    def per_op(guest_mode, n):
        g = TinyGuest("bench", guest_mode, (n,))
        try:
            assert g.read() == 1
            t = time.process_time()
            try:
                g.read()
            except GuestDied:
                pass              # the trap benchmark ends with an unhandled #GP
            return (time.process_time() - t) / n
        finally:
            g.close()
    return per_op(0, 200_000), per_op(1, 50_000)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--kernel", default=os.path.join(SHARED, "vmlinux"))
    ap.add_argument("--hot", choices=MODES, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.hot:
        print(json.dumps(hot_paths(a.hot)))
        return 0
    hot = {m: [] for m in MODES}
    for _ in range(a.runs):
        for mode in MODES:
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "--hot=" + mode],
                                 capture_output=True, text=True, check=True).stdout
            hot[mode].append(json.loads(out))
    print("Hot paths, CPU time per operation, median of %d processes each:" % a.runs)
    base = [statistics.median(h[i] for h in hot["neither"]) for i in range(2)]
    for mode in MODES:
        m = [statistics.median(h[i] for h in hot[mode]) for i in range(2)]
        print("  %-8s  hypercall round trip %6.3f us (x%.2f)   trap to ring 3 %6.2f us (x%.2f)"
              % (mode, m[0] * 1e6, m[0] / base[0], m[1] * 1e6, m[1] / base[1]))
    if not os.path.exists(a.kernel):
        print("trace_cost: no kernel %s: skipped" % a.kernel)
        return 0
    initrd, why = initramfs()
    if initrd is None:
        print("trace_cost: no initramfs (%s): skipped" % why)
        return 0
    with tempfile.TemporaryDirectory(prefix="pylguest-trace-cost-") as tmp:
        disk = os.path.join(tmp, "disk.img")
        shutil.copy(os.path.join(ROOT, "images", "disk.img"), disk)
        trace = os.path.join(tmp, "boot.json")
        times = {m: [] for m in MODES}
        size = 0
        for _ in range(a.runs):
            for mode in MODES:
                extra = [] if mode == "neither" else \
                    ["--stats"] if mode == "--stats" else ["--trace=%s" % trace]
                times[mode].append(boot(a.kernel, initrd, disk, extra))
                if mode == "--trace":
                    size = os.path.getsize(trace)
    try:
        load = "load average %.2f %.2f %.2f" % os.getloadavg()
    except OSError:
        load = ""
    print("Linux boot to poweroff, %s, %d runs per mode, medians (%s):"
          % (os.path.basename(a.kernel), a.runs, load))
    base = [statistics.median(t[i] for t in times["neither"]) for i in range(3)]
    for mode in MODES:
        m = [statistics.median(t[i] for t in times[mode]) for i in range(3)]
        note = "  trace %.1f MB" % (size / 1e6) if mode == "--trace" else ""
        print("  %-8s  init %6.2f s (x%.2f)   exit %6.2f s (x%.2f)   cpu %6.2f s (x%.2f)%s"
              % (mode, m[0], m[0] / base[0], m[1], m[1] / base[1], m[2], m[2] / base[2],
                 note))
    return 0


if __name__ == "__main__":
    sys.exit(main())
