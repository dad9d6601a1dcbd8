#!/usr/bin/env python3
"""The same Linux Guest booted by both Launchers on pylguest's Host, side by side.

    .venv/bin/python bench/compare.py [--kernel K] [--runs N] [--disk-mb M] [--console-kb C]

Boots ../shared/linux/vmlinux (64 MiB, console=hvc0, the project's initramfs running
the script below from a second disk) with launcher.py and with the Linux 3.16 C
Launcher (c_launcher.py), and prints for each:

  boot       wall seconds from starting the Launcher to /init's first line ("pyl: init
             uptime=..."), and the Guest's own /proc/uptime there
  block      sequential read of the whole disk (dd bs=64k of /dev/vda, cold Guest cache)
             and a write of it (dd conv=fsync), MB/s
  console    MB/s of text the Guest writes to hvc0 and the Launcher copies to its stdout

Times are taken on the host as the marker lines arrive on the Launcher's stdout.  The
runs alternate between the Launchers; the best of --runs is shown, and the last column
is C / ours from the same runs.  Needs ../shared/linux (kernel and C Launcher) and the
project's initramfs (made by make, bench/linux_guest.py).
"""

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bench.linux_guest import initramfs, script_image  # noqa: E402

SHARED = os.path.join(os.path.dirname(ROOT), "shared", "linux")
PYTHON = sys.executable

SCRIPT = r"""echo BENCH blk-read
dd if=/dev/vda of=/dev/null bs=64k 2>/dev/null
echo BENCH blk-write
dd if=/dev/zero of=/dev/vda bs=64k count=%(blocks)d conv=fsync 2>/dev/null
echo BENCH con-start
yes 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abc | head -c %(con)d
echo
echo BENCH con-end
"""


def run_one(argv, timeout):
    """Run a Launcher; returns {marker: (host time, bytes of stdout so far, rest)}."""
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    marks = {"start": (t0, 0, "")}
    err = []
    threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True).start()
    total = 0
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        for line in proc.stdout:
            total += len(line)
            if line.startswith(b"BENCH "):
                word, _, rest = line[6:].decode().strip().partition(" ")
                marks[word] = (time.monotonic(), total, rest)
            elif line.startswith(b"pyl: init uptime="):
                marks["init"] = (time.monotonic(), total, line.split(b"=")[1].decode())
        proc.wait()
    finally:
        timer.cancel()
    marks["exit"] = (time.monotonic(), total, proc.returncode)
    time.sleep(0.05)
    if "con-end" not in marks:
        raise SystemExit("bench: %s did not finish: %s" % (
            os.path.basename(argv[1]), b"".join(err).decode(errors="replace")[-500:]))
    return marks


def figures(m, disk_bytes):
    t = {k: v[0] for k, v in m.items()}
    con_bytes = m["con-end"][1] - m["con-start"][1]
    return {
        "boot: wall to /init (s)": t["init"] - t["start"],
        "boot: Guest uptime at /init (s)": float(m["init"][2]),
        "block read (MB/s)": disk_bytes / (t["blk-write"] - t["blk-read"]) / 1e6,
        "block write (MB/s)": disk_bytes / (t["con-start"] - t["blk-write"]) / 1e6,
        "console out (MB/s)": con_bytes / (t["con-end"] - t["con-start"]) / 1e6,
    }


def best(a, b, key):
    return min(a, b) if "(s)" in key else max(a, b)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kernel", default=os.path.join(SHARED, "vmlinux"))
    ap.add_argument("--c-launcher", default=os.path.join(SHARED,
                                                         "lguest-launcher-3.16-dynamic"))
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--mem", type=int, default=64)
    ap.add_argument("--disk-mb", type=int, default=32)
    ap.add_argument("--console-kb", type=int, default=512)
    ap.add_argument("--timeout", type=float, default=300)
    a = ap.parse_args()
    for path in (a.kernel, a.c_launcher):
        if not os.path.exists(path):
            print("bench/compare.py: skipped: %s is missing (see ../shared/linux/README.md)"
                  % path)
            return

    with tempfile.TemporaryDirectory(prefix="lgcompare-") as tmp:
        disk_bytes = a.disk_mb << 20
        initrd, why = initramfs()
        if initrd is None:
            print("bench/compare.py: skipped: no initramfs: %s" % why)
            return
        script = script_image(os.path.join(tmp, "script.img"), SCRIPT % {
            "blocks": disk_bytes >> 16, "con": a.console_kb << 10})
        disk = os.path.join(tmp, "disk.img")
        common = ["--block=" + disk, "--block=" + script, "--initrd=" + initrd, str(a.mem),
                  a.kernel, "console=hvc0", "pyl.script=vdb"]
        who = {
            "pylguest Launcher": [PYTHON, os.path.join(ROOT, "launcher.py")] + common,
            "C Launcher (3.16)": [PYTHON, os.path.join(ROOT, "c_launcher.py"),
                                  "--launcher=" + a.c_launcher] + common,
        }
        results = {name: None for name in who}
        for _ in range(a.runs):
            for name, argv in who.items():
                with open(disk, "wb") as fh:
                    fh.truncate(disk_bytes)
                f = figures(run_one(argv, a.timeout), disk_bytes)
                old = results[name]
                results[name] = f if old is None else {k: best(old[k], f[k], k) for k in f}

    names = list(who)
    print("Linux guest %s, %d MiB, %d MiB disk, %d KiB console; best of %d run(s)"
          % (os.path.basename(a.kernel), a.mem, a.disk_mb, a.console_kb, a.runs))
    print("%-34s %18s %18s %8s" % ("", names[0], names[1], "C/ours"))
    for key in results[names[0]]:
        ours, c = results[names[0]][key], results[names[1]][key]
        print("%-34s %18.2f %18.2f %8.2f" % (key, ours, c, c / ours if ours else 0))


if __name__ == "__main__":
    main()
