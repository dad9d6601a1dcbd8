#!/usr/bin/env python3
"""Where a request's time goes: a timeline of the block (or network) path of a real Linux
Guest, from every process at once.

    .venv/bin/python bench/iopath.py [--workload direct|dd|ping] [--kernel PATH]

Boots ../shared/linux/vmlinux with the project's initramfs and PYLGUEST_TRACE set, so the
Launcher, its Host thread, the Waker and the block worker all mark their steps in one
shared file (host/trace.py), then runs one workload in the Guest:

  direct  dd if=/dev/vda bs=4k count=2048 iflag=direct: one request in flight
  dd      dd if=/dev/vda bs=64k count=1024 after drop_caches: readahead, many in flight
  ping    the Guest pings the host 200 times (root and /dev/net/tun; in a namespace)

and prints, for each request, the median and 90th percentile of every step:

  kick         the Launcher writes the kick down the workpipe (after the Guest's NOTIFY)
  worker_wake  the worker's read of the workpipe returns
  worker_req   ... a request is served (the data is in Guest memory or in the file)
  worker_done  ... the pass's records are down the done pipe
  finish       the Launcher reads them (how it heard: see "how completions reached the
               Launcher" below), drops stale translations, fills the used ring
  irq          LHREQ_IRQ written
  host_in      the Guest runs again (the interrupt is delivered on the way in)
  notify       the Guest's next kick

and what woke the Launcher for each completion: the Host itself in HALT (halt_input), the
Waker's BREAK read by the helper thread (host_event) or by a halted Host (halt_break),
or the Launcher looking after a NOTIFY exit (poll).  Then how the Launcher's thread
spent the run: in the Guest (emu_start), halted, or in between (Python: the Host's
exits and the Launcher's devices).  Figures are wall time on a shared machine: noisy.
"""

import argparse
import bisect
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.linux_guest import initramfs, script_image  # noqa: E402
from bench.net import NetNS, net_unavailable            # noqa: E402
from host.trace import read_file                         # noqa: E402

HOST_IP, GUEST_IP = "10.213.11.1", "10.213.11.2"
WORKLOADS = {
    "direct": "dd if=/dev/vda of=/dev/null bs=4k count=2048 iflag=direct 2>/dev/null\n",
    "dd": "sync; echo 3 >/proc/sys/vm/drop_caches\n"
          "dd if=/dev/vda of=/dev/null bs=64k count=1024 2>/dev/null\n",
    "ping": "ping -c 3 -W 5 %s >/dev/null 2>&1; ping -c 200 -i 0.02 %s | tail -1\n"
            % (HOST_IP, HOST_IP),
}
BLOCK_CHAIN = ["kick", "worker_wake", "worker_req", "worker_done", "finish", "irq",
               "host_in", "notify"]
NET_CHAIN = ["notify", "host_out", "tap_out", "tap_in", "host_in", "notify"]


def pct(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, int(len(v) * p / 100))]


def chains(marks, chain, limit_ns=50_000_000):
    """For each occurrence of chain[0]: the times of the first of each later step after
    the one before it; chains longer than limit_ns are dropped (stragglers)."""
    times = {}
    for ns, _slot, ev in marks:
        times.setdefault(ev, []).append(ns)
    out = []
    for t0 in times.get(chain[0], []):
        row, t = [t0], t0
        for ev in chain[1:]:
            lst = times.get(ev, [])
            j = bisect.bisect_right(lst, t)
            if j >= len(lst):
                break
            t = lst[j]
            row.append(t)
        if len(row) == len(chain) and row[-1] - row[0] < limit_ns:
            out.append(row)
    return out


def report_chain(marks, chain):
    rows = chains(marks, chain)
    if not rows:
        print("  (no complete %s -> ... -> %s sequence)" % (chain[0], chain[-1]))
        return
    print("  %d requests; median step times (us), 90th percentile in brackets:" % len(rows))
    for k in range(len(chain) - 1):
        d = [(r[k + 1] - r[k]) / 1e3 for r in rows]
        print("    %-12s -> %-12s %8.1f  [%8.1f]" % (chain[k], chain[k + 1],
                                                    statistics.median(d), pct(d, 90)))
    tot = [(r[-1] - r[0]) / 1e3 for r in rows]
    print("    %-28s %8.1f  [%8.1f]" % ("whole cycle", statistics.median(tot), pct(tot, 90)))


def report_paths(marks):
    """What told the Launcher of each batch of completions (the mark before 'finish')."""
    seen = {}
    last = None
    for _ns, slot, ev in marks:
        if ev in ("halt_input", "host_event", "halt_break", "kick"):
            last = "poll after NOTIFY" if ev == "kick" else ev
        elif ev == "finish":
            seen[last] = seen.get(last, 0) + 1
            last = None
    total = sum(seen.values()) or 1
    print("  how completions reached the Launcher (%d reads of the done pipe):" % total)
    names = {"halt_input": "the Host, halted, saw the done pipe itself",
             "host_event": "the Waker's BREAK, via the helper thread",
             "halt_break": "the Waker's BREAK, read by the halted Host",
             "poll after NOTIFY": "the Launcher looked after a NOTIFY exit",
             None: "other (reset, start-up)"}
    for k, n in sorted(seen.items(), key=lambda kv: -kv[1]):
        print("    %5.1f%%  %s" % (100.0 * n / total, names.get(k, k)))


def report_split(marks):
    """The Launcher thread's time: in the Guest, halted, or out of both."""
    guest = halted = 0
    t_in = t_halt = None
    mine = [(ns, ev) for ns, slot, ev in marks if slot == 0]
    if not mine:
        return
    for ns, ev in mine:
        if ev == "host_in":
            t_in = ns
        elif ev == "host_back" and t_in is not None:
            guest += ns - t_in
            t_in = None
        if ev == "halt":
            t_halt = ns
        elif ev == "unhalt" and t_halt is not None:
            halted += ns - t_halt
            t_halt = None
    span = mine[-1][0] - mine[0][0]
    print("  the Launcher's thread over %.2f s: in the Guest %.2f s, halted %.2f s, "
          "in the Host's exits and the Launcher's devices %.2f s"
          % (span / 1e9, guest / 1e9, halted / 1e9, (span - guest - halted) / 1e9))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", choices=sorted(WORKLOADS), default="direct")
    ap.add_argument("--kernel", default=str(ROOT.parent / "shared" / "linux" / "vmlinux"))
    opts = ap.parse_args()
    kernel = Path(opts.kernel)
    if not kernel.is_file():
        print("bench/iopath.py: skipped: no Linux guest kernel at %s (--kernel)" % kernel)
        return 0
    initrd, why = initramfs()
    if initrd is None:
        print("bench/iopath.py: skipped: no initramfs (%s)" % why.splitlines()[-1])
        return 0
    net = opts.workload == "ping"
    if net and net_unavailable():
        print("bench/iopath.py: skipped: %s" % net_unavailable())
        return 0
    with tempfile.TemporaryDirectory(prefix="pylguest-iopath-") as tmp:
        tmp = Path(tmp)
        data = tmp / "data.img"
        with open(data, "wb") as f:
            mib = os.urandom(1 << 20)
            for _ in range(64):
                f.write(mib)
        script = script_image(tmp / "script.img", WORKLOADS[opts.workload])
        trace = tmp / "trace"
        argv = [sys.executable, str(ROOT / "launcher.py"), "--block=%s" % data,
                "--block=%s" % script, "--initrd=%s" % initrd, "64", str(kernel),
                "console=hvc0", "pyl.script=vdb"]
        if net:
            argv[2:2] = ["--tunnet=%s" % HOST_IP]
            argv.append("pyl.ip=%s" % GUEST_IP)
        env = dict(os.environ, PYLGUEST_TRACE=str(trace))
        if net:
            with NetNS("lgio") as ns:
                proc = subprocess.run(ns.argv(argv), env=env, cwd=ROOT, capture_output=True,
                                      text=True, stdin=subprocess.DEVNULL, timeout=900)
        else:
            proc = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True,
                                  stdin=subprocess.DEVNULL, timeout=900)
        if proc.returncode != 0 or "pyl: done vdb status=0" not in proc.stdout:
            print("bench/iopath.py: the Guest did not finish:\n%s%s"
                  % (proc.stdout[-2000:], proc.stderr[-2000:]))
            return 1
        marks = read_file(trace)
    print("I/O path, workload %s (%s; load average %.1f on %d CPUs)"
          % (opts.workload, kernel.name, os.getloadavg()[0], os.cpu_count()))
    if net:
        print("  the Guest's ping: %s" % proc.stdout.split("round-trip")[-1].strip()
              .splitlines()[0] if "round-trip" in proc.stdout else "  (no ping summary)")
        report_chain(marks, NET_CHAIN)
    else:
        report_chain(marks, BLOCK_CHAIN)
        report_paths(marks)
    report_split(marks)
    return 0


if __name__ == "__main__":
    sys.exit(main())
