#!/usr/bin/env python3
"""The Linux bench: a real Linux 3.16 Guest on pylguest, timed on the workloads the
real lguest (Linux 3.16 Host + its C Launcher, nested in QEMU's emulator on this kind
of machine) was timed on for issues 13 and 14, each figure beside the real lguest's
and the ratio.

  block  dd 256 MiB bs=64k after drop_caches       8192 x 4 KiB reads, iflag=direct
         the same 8192 x 4 KiB buffered after drop_caches     write 32 MiB conv=fsync
  net    the Guest pings the host (avg, percentiles); the host pings the Guest
         (percentiles) and floods it with 32 pings in flight (replies/s)
  cpu    boot to init (the Guest's uptime when /init starts); sha256sum of 16 MiB in
         tmpfs and from a pipe; 200 x fork+exec of a tiny static program

    .venv/bin/python bench/linux.py [--boots N] [--rounds N] [--cpu-rounds N]
                                    [--only block,net,cpu] [--kernel PATH] [--mem MB]

This is the one Linux bench: the CPU rows were bench/cpu.py's (issue 13).

The Guest runs our initramfs (make images/linux-initrd.cpio.gz) with a script on a
second disk (pyl.script=vdb); /dev/vda is a 288 MiB data file (reads from its first
256 MiB, writes after them).  Times are the Guest's own monotonic clock (read from
/proc/timer_list, nanoseconds), boot to init its /proc/uptime.  Each row is the median
over rounds (--rounds for the block rows, --cpu-rounds for the CPU rows) and boots;
"host CPU" is the user+system time of the Launcher, the Waker and the block worker
during the row (less noisy than wall time on a shared machine).  Network rows need root and /dev/net/tun and run inside a network
namespace made for the run.  Without ../shared/linux/vmlinux (or --kernel) it says
so in one line and exits 0.

Figures on a shared machine are noisy: the load average is printed with them.
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
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.linux_guest import initramfs_or_skip, script_image  # noqa: E402
from bench.net import (NetNS, flood, icmp_socket, net_unavailable,  # noqa: E402
                       ping, wait_for_reply)

#: what the Guest's sha256sum of 16 MiB of zeroes must print (the CPU rows ran right)
ZEROES_16M = "SUM 080acf35a507ac9849cfcba47dc2ad83e01b75663a516279c8b9d243b719643e  /tmp/f"
HOST_IP = "10.213.9.1"
GUEST_IP = "10.213.9.2"
DATA_MB = 288               # 256 MiB read, 32 MiB written after it

# (key, label, unit, real lguest, QEMU native, goal) -- from issues 13 and 14.
# The real lguest's guest->host ping was "1.2-1.6 ms": the ratio is against 1.4.
ROWS = [
    ("dd", "dd 256 MiB bs=64k (cold)", "s", 5.13, None, 2.5),
    ("direct", "8192 x 4 KiB iflag=direct", "s", 1.98, None, 1.98),
    ("buffered", "8192 x 4 KiB buffered (cold)", "s", 0.66, None, 0.66),
    ("write", "write 32 MiB conv=fsync", "s", 0.91, None, 0.91),
    ("g2h_avg", "Guest->host ping avg", "ms", 1.4, None, 1.5),
    ("g2h_p50", "Guest->host ping p50", "ms", None, None, None),
    ("g2h_p90", "Guest->host ping p90", "ms", None, None, None),
    ("g2h_max", "Guest->host ping max", "ms", None, None, None),
    ("h2g_p50", "host->Guest ping p50", "ms", None, None, None),
    ("h2g_p90", "host->Guest ping p90", "ms", None, None, None),
    ("h2g_p99", "host->Guest ping p99", "ms", None, None, None),
    ("h2g_avg", "host->Guest ping avg", "ms", None, None, 1.5),
    ("flood", "host->Guest flood (32 in flight)", "/s", None, None, None),
    ("boot", "boot to init (uptime)", "s", 0.72, None, 0.5),
    ("sha256", "sha256 16 MiB, tmpfs", "s", 0.65, 0.45, 0.65),
    ("sha256_pipe", "sha256 16 MiB, pipe", "s", None, None, None),
    ("forkexec", "200 x fork+exec", "s", 2.98, None, 1.0),
]
GROUPS = {
    "block": ("dd", "direct", "buffered", "write"),
    "net": ("g2h_avg", "g2h_p50", "g2h_p90", "g2h_max", "h2g_p50", "h2g_p90", "h2g_p99",
            "h2g_avg", "flood"),
    "cpu": ("boot", "sha256", "sha256_pipe", "forkexec"),
}


def tiny_exit_elf():
    """A static i386 ELF that does exit(0): mov $1,%eax; xor %ebx,%ebx; int $0x80."""
    code = bytes.fromhex("b801000000" "31db" "cd80")
    base, off = 0x08048000, 52 + 32
    ehdr = struct.pack("<4sBBBB8xHHIIIIIHHHHHH", b"\x7fELF", 1, 1, 1, 0, 2, 3, 1,
                       base + off, 52, 0, 0, 52, 32, 1, 0, 0, 0)
    phdr = struct.pack("<IIIIIIII", 1, 0, base, base, off + len(code), off + len(code),
                       5, 0x1000)
    return ehdr + phdr + code


def printf_octal(data):
    """A printf(1) format writing data exactly (every byte as an octal escape)."""
    return "".join("\\%03o" % b for b in data)


# The script the Guest runs (pyl.script=vdb).  Lines the bench reads:
#   S NAME (a row starts)   T NAME START_NS END_NS (its times)   P <ping output line>
#   N ready  (then it waits for a line on the console: the host's pings are done)
SCRIPT = r"""
rounds=${pyl_rounds:-1}
only=${pyl_only:-block,net,cpu}
# The Guest's monotonic clock in ns, read with shell builtins only (no fork).
now() { while read -r w1 w2 w3 rest; do
    if [ "$w1" = now ]; then NOW=$w3; return; fi; done </proc/timer_list; }
t() { name=$1; shift; echo "S $name"; now; a=$NOW; "$@"; now; echo "T $name $a $NOW"; }
drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }
fe() { i=0; while [ $i -lt 200 ]; do /tmp/x; i=$((i+1)); done; }
printf '%(elf)s' >/tmp/x; chmod +x /tmp/x
r=0
while [ $r -lt $rounds ]; do
    r=$((r+1))
    case ,$only, in *,block,*)
        drop; t dd dd if=/dev/vda of=/dev/null bs=64k count=4096 2>/dev/null
        t direct dd if=/dev/vda of=/dev/null bs=4k count=8192 iflag=direct 2>/dev/null
        drop; t buffered dd if=/dev/vda of=/dev/null bs=4k count=8192 2>/dev/null
        t write dd if=/dev/zero of=/dev/vda bs=64k seek=4096 count=512 conv=fsync 2>/dev/null
        ;;
    esac
done
case ,$only, in *,cpu,*)
    dd if=/dev/zero of=/tmp/f bs=1M count=16 2>/dev/null
    echo "SUM $(sha256sum /tmp/f)"
    r=0
    while [ $r -lt ${pyl_cpurounds:-3} ]; do
        r=$((r+1))
        t sha256 sh -c 'sha256sum /tmp/f >/dev/null'
        t sha256_pipe sh -c 'dd if=/dev/zero bs=1M count=16 2>/dev/null | sha256sum >/dev/null'
        t forkexec fe
    done
    rm -f /tmp/f ;;
esac
case ,$only, in *,net,*)
    if [ -n "$pyl_ip" ]; then
        ping -c 3 -W 5 %(host)s >/dev/null 2>&1
        ping -c ${pyl_pings:-50} -i 0.1 %(host)s | sed 's/^/P /'
        echo "N ready"
        read -r word
    fi ;;
esac
"""


def data_image(path, mb=DATA_MB):
    """mb MiB of non-zero data (a repeated random MiB): the host's page cache holds it
    after the first boot, as it did for the real lguest's runs."""
    mib = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for _ in range(mb):
            f.write(mib)


def percentile(values, p):
    v = sorted(values)
    if not v:
        return None
    k = (len(v) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


class Launch:
    """The Launcher in the background: stdout gathered line by line."""

    def __init__(self, argv):
        self.proc = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines = []
        self.cpu = {}           # row -> CPU seconds of the Launcher and its children
        self._started = {}
        self.ready = threading.Event()
        self._pump = threading.Thread(target=self._read, daemon=True)
        self._pump.start()

    def _read(self):
        for raw in iter(self.proc.stdout.readline, b""):
            line = raw.decode(errors="replace").rstrip("\r\n")
            self.lines.append(line)
            m = re.match(r"([ST]) (\S+)", line)
            if m:
                now = self.tree_cpu()
                if m.group(1) == "S":
                    self._started[m.group(2)] = now
                elif m.group(2) in self._started and now is not None:
                    self.cpu.setdefault(m.group(2), []).append(
                        now - self._started.pop(m.group(2)))
            if line == "N ready":
                self.ready.set()
        self.ready.set()

    def tree_cpu(self):
        """User+system seconds of the Launcher, the Waker and the block worker so far
        (the Guest's lines reach us a little after it printed them: close enough)."""
        try:
            p = psutil.Process(self.proc.pid)
            procs = [p] + p.children(recursive=True)
            return sum(sum(q.cpu_times()[:2]) for q in procs)
        except psutil.Error:
            return None

    def type(self, text):
        try:
            self.proc.stdin.write(text.encode())
            self.proc.stdin.flush()
        except OSError:
            pass

    def finish(self, timeout):
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._pump.join(5)
        return self.proc.returncode, self.proc.stderr.read().decode(errors="replace")


def parse(lines):
    """{key: [values]} from the Guest's D / T / P lines and /init's uptime line."""
    got = {}

    def add(k, v):
        got.setdefault(k, []).append(v)

    g2h = []
    for line in lines:
        m = re.match(r"T (\S+) (\d+) (\d+)", line)
        if m:
            add(m.group(1), (int(m.group(3)) - int(m.group(2))) / 1e9)
            continue
        m = re.match(r"pyl: init uptime=([\d.]+)", line)
        if m:
            add("boot", float(m.group(1)))
            continue
        m = re.match(r"P .* time=([\d.]+) ms", line)
        if m:
            g2h.append(float(m.group(1)))
    if g2h:
        add("g2h_avg", statistics.mean(g2h))
        add("g2h_p50", percentile(g2h, 50))
        add("g2h_p90", percentile(g2h, 90))
        add("g2h_max", max(g2h))
    return got


def host_pings(ns, count, flood_secs):
    """Host -> Guest: sequential pings (RTT percentiles, ms) and a flood (replies/s)."""
    got = {}
    sock = icmp_socket(ns)
    try:
        if not wait_for_reply(sock, GUEST_IP, 30):
            return got
        rtts = [r * 1e3 for r in ping(sock, GUEST_IP, count, timeout=1.0, interval=0.01)
                if r is not None]
        if rtts:
            got["h2g_avg"] = [statistics.mean(rtts)]
            for p in (50, 90, 99):
                got["h2g_p%d" % p] = [percentile(rtts, p)]
        if flood_secs > 0:
            _sent, received, elapsed = flood(sock, GUEST_IP, flood_secs)
            got["flood"] = [received / elapsed]
    finally:
        sock.close()
    return got


def boot(opts, kernel, initrd, data, script, ns):
    """One boot: returns ({key: [values]}, wall s, Launcher CPU s)."""
    args = ["--block=%s" % data, "--block=%s" % script]
    extra = ["pyl.rounds=%d" % opts.rounds, "pyl.only=%s" % ",".join(opts.only),
             "pyl.pings=%d" % opts.pings, "pyl.cpurounds=%d" % opts.cpu_rounds]
    if ns is not None:
        args.insert(0, "--tunnet=%s" % HOST_IP)
        extra.append("pyl.ip=%s" % GUEST_IP)
    argv = ([sys.executable, str(ROOT / "launcher.py")] + args
            + ["--initrd=%s" % initrd, str(opts.mem), str(kernel), "console=hvc0",
               "pyl.script=vdb"] + extra)
    if ns is not None:
        argv = ns.argv(argv)
    t = time.perf_counter()
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    run = Launch(argv)
    host = {}
    try:
        if ns is not None:
            run.ready.wait(opts.timeout)
            if run.proc.poll() is None:
                host = host_pings(ns, opts.pings, opts.flood_secs)
            run.type("done\n")
    finally:
        status, err = run.finish(opts.timeout)
    wall = time.perf_counter() - t
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
    if (status != 0 or "pyl: done vdb status=0" not in run.lines
            or ("cpu" in opts.only and ZEROES_16M not in run.lines)):
        sys.exit("bench/linux.py: the Guest did not finish the bench (status %s):\n%s\n%s"
                 % (status, "\n".join(run.lines[-40:]), err[-2000:]))
    if opts.raw:
        print("\n".join(run.lines))
    got = parse(run.lines)
    got.update(host)
    for k, v in run.cpu.items():
        got["cpu:" + k] = v
    return got, wall, cpu


def fmt(v, unit):
    if v is None:
        return "-"
    if unit == "/s":
        return "%.0f/s" % v
    if unit == "ms":
        return "%.2f ms" % v
    return "%.2f s" % v


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--boots", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=1, help="rounds of the block rows per boot")
    ap.add_argument("--cpu-rounds", type=int, default=3, help="rounds of the CPU rows per boot")
    ap.add_argument("--only", default="block,net,cpu")
    ap.add_argument("--kernel", default=str(ROOT.parent / "shared" / "linux" / "vmlinux"))
    ap.add_argument("--mem", type=int, default=64)
    ap.add_argument("--pings", type=int, default=50)
    ap.add_argument("--flood-secs", type=float, default=3.0)
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--raw", action="store_true", help="print the Guest's output too")
    ap.add_argument("--json", help="also write every boot's figures to this file")
    opts = ap.parse_args()
    opts.only = [g for g in opts.only.split(",") if g]
    bad = [g for g in opts.only if g not in GROUPS]
    if bad:
        ap.error("--only: unknown group %s (block, net, cpu)" % ",".join(bad))
    kernel = Path(opts.kernel)
    initrd = initramfs_or_skip("bench/linux.py", kernel)
    if initrd is None:
        return 0
    net_why = net_unavailable() if "net" in opts.only else "not asked for"

    runs, walls, cpus = [], [], []
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="pylguest-linux-bench-") as tmp:
        data = Path(tmp) / "data.img"
        script = Path(tmp) / "script.img"
        data_image(data, DATA_MB if "block" in opts.only else 1)
        script_image(script, SCRIPT % {"elf": printf_octal(tiny_exit_elf()),
                                       "host": HOST_IP})
        for _ in range(opts.boots):
            if net_why is None:
                with NetNS("lgbl") as ns:
                    got, wall, cpu = boot(opts, kernel, initrd, data, script, ns)
            else:
                got, wall, cpu = boot(opts, kernel, initrd, data, script, None)
            runs.append(got)
            walls.append(wall)
            cpus.append(cpu)
            loads.append(os.getloadavg()[0])

    if opts.json:
        import json
        with open(opts.json, "w") as f:
            json.dump({"boots": runs, "walls": walls, "cpus": cpus, "loads": loads}, f)
    print("Linux guest on pylguest (%s, %d MiB, %d boot(s) x %d block / %d CPU round(s), "
          "medians; load average %.1f-%.1f on %d CPUs)"
          % (kernel.name, opts.mem, opts.boots, opts.rounds, opts.cpu_rounds, min(loads),
             max(loads), os.cpu_count()))
    print("  %-34s %10s %12s %7s %9s %9s %9s" % ("", "pylguest", "real lguest", "ratio",
                                                 "QEMU", "goal", "host CPU"))
    keys = [k for g in opts.only for k in GROUPS[g]]
    for key, label, unit, real, qemu, goal in ROWS:
        if key not in keys:
            continue
        if key in GROUPS["net"] and net_why is not None:
            print("  %-34s %10s  (%s)" % (label, "-", net_why))
            continue
        vals = [statistics.median(r[key]) for r in runs if r.get(key)]
        v = statistics.median(vals) if vals else None
        ratio = "%.2f" % (v / real) if v is not None and real else "-"
        spread = ""
        if len(vals) > 1:
            spread = "  [%s..%s]" % (fmt(min(vals), unit), fmt(max(vals), unit))
        real_s = "1.2-1.6 ms" if key == "g2h_avg" else fmt(real, unit)
        cpu = [statistics.median(r["cpu:" + key]) for r in runs if r.get("cpu:" + key)]
        cpu_s = fmt(statistics.median(cpu), "s") if cpu else "-"
        print("  %-34s %10s %12s %7s %9s %9s %9s%s"
              % (label, fmt(v, unit), real_s, ratio, fmt(qemu, unit),
                 ("<= " + fmt(goal, unit)) if goal else "-", cpu_s, spread))
    print("  %-34s %10s  (Launcher CPU %s; Guest times are wall time)"
          % ("whole run, per boot", fmt(statistics.median(walls), "s"),
             fmt(statistics.median(cpus), "s")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
