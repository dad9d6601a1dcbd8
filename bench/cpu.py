#!/usr/bin/env python3
"""How fast does a real Linux Guest's own code run?  Prints the CPU rows of issue 13:

  boot to init        the Guest's /proc/uptime when /init starts       goal <= 0.5 s
  sha256 tmpfs        sha256sum of a 16 MiB file in tmpfs              goal <= 0.65 s
  sha256 pipe         dd 16 MiB of zeroes | sha256sum                  (stretch 0.45 s)
  fork+exec x200      a shell loop running a tiny static program       goal <= 1.0 s

    .venv/bin/python bench/cpu.py [--boots N] [--kernel PATH]

Boots ../shared/linux/vmlinux (64 MiB, console=hvc0) with the project's initramfs, which
runs the script below from a disk (bench/linux_guest.py).  Times are the Guest's own
clock (its TSC is the host's; /proc/uptime, 10 ms steps), the median of 3 rounds in each
boot and of the boots.  Beside them: the real lguest (Linux 3.16 Host + C Launcher,
nested in QEMU's emulator on this kind of machine) and QEMU's emulator natively, as
measured for issue 13.  The Guest's clock is wall time: on a busy host every row is
slower than the CPU alone made it, so the Launcher's CPU time is printed too.  Without
../shared/linux or the initramfs it says so in one line and exits 0.
"""

import argparse
import os
import re
import resource
import statistics
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bench.linux_guest import initramfs, script_image  # noqa: E402

KERNEL = os.path.join(os.path.dirname(ROOT), "shared", "linux", "vmlinux")
ZEROES_16M = "SUM 080acf35a507ac9849cfcba47dc2ad83e01b75663a516279c8b9d243b719643e"


def tiny_exit_elf():
    """A static i386 ELF that does exit(0): mov $1,%eax; xor %ebx,%ebx; int $0x80."""
    code = bytes.fromhex("b801000000" "31db" "cd80")
    base, off = 0x08048000, 52 + 32
    ehdr = struct.pack("<4sBBBB8xHHIIIIIHHHHHH", b"\x7fELF", 1, 1, 1, 0, 2, 3, 1,
                       base + off, 52, 0, 0, 52, 32, 1, 0, 0, 0)
    phdr = struct.pack("<IIIIIIII", 1, 0, base, base, off + len(code), off + len(code), 5,
                       0x1000)
    return ehdr + phdr + code


SCRIPT = r"""printf '%(elf)s' > /tmp/x; chmod +x /tmp/x
dd if=/dev/zero of=/tmp/f bs=1M count=16 2>/dev/null
echo "SUM $(sha256sum /tmp/f)"
t() { name=$1; shift; read -r a _ </proc/uptime; "$@"; read -r b _ </proc/uptime; echo "T $name $a $b"; }
fe() { i=0; while [ $i -lt 200 ]; do /tmp/x; i=$((i+1)); done; }
for r in 1 2 3; do
  t sha256-tmpfs sh -c 'sha256sum /tmp/f >/dev/null'
  t sha256-pipe sh -c 'dd if=/dev/zero bs=1M count=16 2>/dev/null | sha256sum >/dev/null'
  t fork-exec fe
done
""" % {"elf": "".join("\\%03o" % b for b in tiny_exit_elf())}

# (name, label, goal, real lguest, QEMU native) -- seconds, from issue 13
ROWS = [
    ("boot", "boot to init (uptime)", 0.5, 0.72, None),
    ("sha256-tmpfs", "sha256 16 MiB, tmpfs", 0.65, 0.65, 0.45),
    ("sha256-pipe", "sha256 16 MiB, pipe", 0.65, None, None),
    ("fork-exec", "200 x fork+exec", 1.0, 2.98, None),
]


def boot(kernel, initrd, script):
    """One boot; returns ({name: [seconds...]}, wall seconds, CPU seconds)."""
    t = time.perf_counter()
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "launcher.py"),
                           "--block=" + script, "--initrd=" + initrd, "64", kernel,
                           "console=hvc0", "pyl.script=vda"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT,
                          stdin=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
    got = {}
    m = re.search(r"^pyl: init uptime=([\d.]+)", proc.stdout, re.M)
    if m:
        got["boot"] = [float(m.group(1))]
    for m in re.finditer(r"^T (\S+) ([\d.]+) ([\d.]+)", proc.stdout, re.M):
        got.setdefault(m.group(1), []).append(float(m.group(3)) - float(m.group(2)))
    if "sha256-tmpfs" not in got or "boot" not in got or ZEROES_16M not in proc.stdout:
        sys.exit("bench/cpu.py: the Guest did not run the benchmark:\n%s%s"
                 % (proc.stdout[-2000:], proc.stderr[-2000:]))
    return got, wall, cpu


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--boots", type=int, default=3)
    ap.add_argument("--kernel", default=KERNEL)
    args = ap.parse_args()
    if not os.path.isfile(args.kernel):
        print("bench/cpu.py: skipped: no guest kernel at %s" % args.kernel)
        return
    initrd, why = initramfs()
    if initrd is None:
        print("bench/cpu.py: skipped: no initramfs (%s)" % why.splitlines()[-1])
        return
    runs, walls, cpus = [], [], []
    with tempfile.TemporaryDirectory(prefix="pylguest-cpu-") as tmp:
        script = script_image(os.path.join(tmp, "script.img"), SCRIPT)
        for _ in range(args.boots):
            got, wall, cpu = boot(args.kernel, initrd, script)
            runs.append(got)
            walls.append(wall)
            cpus.append(cpu)
    print("Linux guest CPU (%s, %d boots x 3 rounds, medians; load %.1f on %d cpus)"
          % (os.path.basename(args.kernel), args.boots, os.getloadavg()[0], os.cpu_count()))
    print("  %-24s %8s %8s %12s %8s" % ("", "pylguest", "goal", "real lguest", "QEMU"))

    def fmt(v):
        return "%.2f s" % v if v is not None else "-"
    for name, label, goal, lg, qemu in ROWS:
        vals = [statistics.median(r[name]) for r in runs]
        print("  %-24s %8s %8s %12s %8s" % (label, fmt(statistics.median(vals)), fmt(goal),
                                            fmt(lg), fmt(qemu)))
    print("  %-24s %8s  (Launcher CPU time %s)" % ("Launcher wall, per boot",
                                                  fmt(statistics.median(walls)),
                                                  fmt(statistics.median(cpus))))


if __name__ == "__main__":
    main()
