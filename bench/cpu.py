"""How fast does a real Linux Guest's own code run?  Prints the CPU rows of issue 13:

  boot to init        the Guest's /proc/uptime when /init starts       goal <= 0.5 s
  sha256 tmpfs        sha256sum of a 16 MiB file in tmpfs              goal <= 0.65 s
  sha256 pipe         dd 16 MiB of zeroes | sha256sum                  (stretch 0.45 s)
  fork+exec x200      a shell loop running a tiny static binary        goal <= 1.0 s

Times are the Guest's own clock (its TSC is the host's), 10 ms resolution, median of
the rounds in each boot and of the boots.  Beside them: the real lguest (Linux 3.16
Host + C Launcher, nested in QEMU's emulator on this kind of machine) and QEMU's
emulator natively, as measured for issue 13.

  .venv/bin/python bench/cpu.py [--boots N] [--kernel PATH] [--busybox PATH]

Needs a Linux guest kernel (../shared/linux/vmlinux) and an i386 busybox
($BUSYBOX, /work/helpers/busybox-i386, or /bin/busybox if it is i386); without them
it says so in one line and exits 0.  The initramfs is made here, in a temporary
directory: busybox, our /init, and a 100-byte static program for fork+exec.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROUNDS = 3
ZEROES_16M = "SUM 080acf35a507ac9849cfcba47dc2ad83e01b75663a516279c8b9d243b719643e"

INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
echo "T boot 0 $(cat /proc/uptime)"
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
dd if=/dev/zero of=/tmp/f bs=1M count=16 2>/dev/null
echo "SUM $(sha256sum /tmp/f)"
t() { name=$1; shift; a=$(cat /proc/uptime); "$@"; echo "T $name ${a%% *} $(cat /proc/uptime)"; }
fe() { i=0; while [ $i -lt 200 ]; do /x; i=$((i+1)); done; }
for r in 1 2 3; do
  t sha256-tmpfs sh -c 'sha256sum /tmp/f >/dev/null'
  t sha256-pipe sh -c 'dd if=/dev/zero bs=1M count=16 2>/dev/null | sha256sum >/dev/null'
  t fork-exec fe
done
poweroff -f
"""

# (name, label, goal, real lguest, QEMU native) -- seconds, from issue 13
ROWS = [
    ("boot", "boot to init (uptime)", 0.5, 0.72, None),
    ("sha256-tmpfs", "sha256 16 MiB, tmpfs", 0.65, 0.65, 0.45),
    ("sha256-pipe", "sha256 16 MiB, pipe", 0.65, None, None),
    ("fork-exec", "200 x fork+exec", 1.0, 2.98, None),
]


def tiny_exit_elf():
    """A static i386 ELF that does exit(0): mov $1,%eax; xor %ebx,%ebx; int $0x80."""
    code = bytes.fromhex("b801000000" "31db" "cd80")
    base, off = 0x08048000, 52 + 32
    ehdr = struct.pack("<4sBBBB8xHHIIIIIHHHHHH", b"\x7fELF", 1, 1, 1, 0, 2, 3, 1,
                       base + off, 52, 0, 0, 52, 32, 1, 0, 0, 0)
    phdr = struct.pack("<IIIIIIII", 1, 0, base, base, off + len(code), off + len(code), 5,
                       0x1000)
    return ehdr + phdr + code


def newc(entries):
    """An uncompressed initramfs (cpio "newc"): entries of (name, mode, data)."""
    out = bytearray()

    def one(ino, name, mode, data):
        nb = name.encode() + b"\0"
        out.extend(b"070701" + b"".join(b"%08X" % v for v in (
            ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(nb), 0)))
        out.extend(nb)
        out.extend(b"\0" * (-len(out) % 4))
        out.extend(data)
        out.extend(b"\0" * (-len(out) % 4))

    for i, (name, mode, data) in enumerate(entries, 1):
        one(i, name, mode, data)
    one(0, "TRAILER!!!", 0, b"")
    return bytes(out)


def find_busybox(given):
    for cand in (given, os.environ.get("BUSYBOX"), "/work/helpers/busybox-i386",
                 "/bin/busybox"):
        if cand and Path(cand).is_file():
            head = Path(cand).read_bytes()[:20]
            if head[:4] == b"\x7fELF" and head[4] == 1 and struct.unpack("<H", head[18:20])[0] == 3:
                return Path(cand)
    return None


def make_initrd(busybox, path):
    d, f, x = 0o040755, 0o100755, 0o100644
    entries = [("bin", d, b""), ("proc", d, b""), ("tmp", d, b""), ("dev", d, b""),
               ("bin/busybox", f, busybox.read_bytes()), ("init", f, INIT.encode()),
               ("x", f, tiny_exit_elf()), ("etc", d, b""), ("etc/hostname", x, b"cpu\n")]
    path.write_bytes(newc(entries))


def boot(kernel, initrd):
    """One boot; returns ({name: [seconds...]}, wall seconds, CPU seconds)."""
    t = time.perf_counter()
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, str(ROOT / "launcher.py"), f"--initrd={initrd}",
                           "64", str(kernel), "console=hvc0", "quiet"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT,
                          stdin=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
    got = {}
    for m in re.finditer(r"^T (\S+) ([\d.]+) ([\d.]+)", proc.stdout, re.M):
        got.setdefault(m.group(1), []).append(float(m.group(3)) - float(m.group(2)))
    if "sha256-tmpfs" not in got or ZEROES_16M not in proc.stdout:
        sys.exit("lguest: the Guest did not run the benchmark:\n%s%s"
                 % (proc.stdout[-2000:], proc.stderr[-2000:]))
    return got, wall, cpu


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--boots", type=int, default=3)
    ap.add_argument("--kernel", default=str(ROOT.parent / "shared" / "linux" / "vmlinux"))
    ap.add_argument("--busybox")
    args = ap.parse_args()
    kernel = Path(args.kernel)
    busybox = find_busybox(args.busybox)
    if not kernel.is_file() or busybox is None:
        print("bench/cpu.py: skipped: needs %s" % ("a guest kernel (--kernel)" if not
              kernel.is_file() else "an i386 busybox (--busybox or $BUSYBOX)"))
        return
    with tempfile.TemporaryDirectory(prefix="pylguest-cpu-") as tmp:
        initrd = Path(tmp) / "initrd.cpio"
        make_initrd(busybox, initrd)
        runs, walls, cpus = [], [], []
        for _ in range(args.boots):
            got, wall, cpu = boot(kernel, initrd)
            runs.append(got)
            walls.append(wall)
            cpus.append(cpu)
    load = os.getloadavg()[0]
    print("Linux guest CPU (%s, %d boots x %d rounds, medians; load %.1f on %d cpus)"
          % (kernel.name, args.boots, ROUNDS, load, os.cpu_count()))
    print("  %-24s %8s %8s %12s %8s" % ("", "pylguest", "goal", "real lguest", "QEMU"))
    fmt = lambda v: "%.2f s" % v if v is not None else "-"  # noqa: E731
    for name, label, goal, lg, qemu in ROWS:
        vals = [statistics.median(r[name]) for r in runs if name in r]
        print("  %-24s %8s %8s %12s %8s" % (label, fmt(statistics.median(vals)), fmt(goal),
                                            fmt(lg), fmt(qemu)))
    print("  %-24s %8s  (CPU %s; the Guest's clock is wall time: on a busy host"
          % ("Launcher, per boot", fmt(statistics.median(walls)), fmt(statistics.median(cpus))))
    print("  %-24s %8s   every row is slower than the CPU alone made it)" % ("", ""))


if __name__ == "__main__":
    main()
