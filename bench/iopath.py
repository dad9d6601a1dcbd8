#!/usr/bin/env python3
"""Where a disk request's time goes, from the Launcher's own trace (--trace, lgtrace).

    .venv/bin/python bench/iopath.py [--workload direct|dd|ping] [--kernel PATH]

Boots ../shared/linux/vmlinux with the project's initramfs under `launcher.py
--trace=FILE`, runs one workload in the Guest, and reads the Perfetto trace back:

  direct  dd if=/dev/vda bs=4k count=1024 iflag=direct: one request in flight
  dd      dd if=/dev/vda bs=64k count=256 after drop_caches: readahead, many in flight
  ping    the Guest pings the host 100 times (root and /dev/net/tun; in a namespace)

For each disk request the trace's arrows give kick -> request -> LHREQ_IRQ ->
delivery, and this prints the median and 90th percentile of every step:

  kick -> worker      the Launcher's kick until the worker starts the request (the
                      workpipe, the worker's wake-up, the requests before it in its pass)
  worker              the request itself (preadv/pwritev)
  worker -> Launcher  until the Launcher writes LHREQ_IRQ for it (the rest of the pass,
                      the done pipe, however the Launcher heard, the used ring)
  LHREQ_IRQ -> Guest  until the interrupt is delivered
  Guest               from delivery to the Guest's next kick (its own work)

and how the Launcher heard of each batch of completions: after a NOTIFY exit (it looks
at its input then), a halted Host that saw the done pipe itself, or the Waker's BREAK.
For ping: how each frame from the host reached the Launcher the same way.  Figures are
wall time on a shared machine: noisy.
"""

import argparse
import bisect
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.linux_guest import initramfs_or_skip, script_image  # noqa: E402
from bench.net import NetNS, net_unavailable            # noqa: E402

HOST_IP, GUEST_IP = "10.213.11.1", "10.213.11.2"
WORKLOADS = {
    "direct": "dd if=/dev/vda of=/dev/null bs=4k count=1024 iflag=direct 2>/dev/null\n",
    "dd": "sync; echo 3 >/proc/sys/vm/drop_caches\n"
          "dd if=/dev/vda of=/dev/null bs=64k count=256 2>/dev/null\n",
    "ping": "ping -c 3 -W 5 %s >/dev/null 2>&1; ping -c 100 -i 0.02 %s | tail -1\n"
            % (HOST_IP, HOST_IP),
}
HOW = (("NOTIFY", "the Launcher looked after a NOTIFY exit"),
       ("EAGAIN: input the halted", "the halted Host saw it itself (no BREAK)"),
       ("EAGAIN: a BREAK", "the Waker's BREAK"))


def pct(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, int(len(v) * p / 100))]


def flows(events, name):
    """{id: (start ts, finish ts)} of the trace's arrows called name (microseconds)."""
    s, f = {}, {}
    for e in events:
        if e.get("name") == name:
            (s if e["ph"] == "s" else f if e["ph"] == "f" else {})[e["id"]] = e["ts"]
    return {i: (s[i], f[i]) for i in s if i in f}


def block_steps(events):
    """Rows of (kick, start, end, lhreq_irq, delivered, next kick) for every request the
    arrows connect, in microseconds."""
    kick_req = flows(events, "kick -> request")
    req_irq = flows(events, "request -> LHREQ_IRQ")
    irq_del = flows(events, "interrupt -> delivery")
    by_start = {}
    for k, r in kick_req.values():
        by_start.setdefault(r, k)
    delivered = {s: f for s, f in irq_del.values()}
    ends = sorted(e["ts"] for e in events if e.get("ph") == "E"
                  and str(e.get("args", {}).get("status", "")).startswith("VIRTIO_BLK_S"))
    kicks = sorted(e["ts"] for e in events if e.get("ph") == "X"
                   and e.get("name", "").startswith("kick: block"))
    rows = []
    for start, irq in req_irq.values():
        kick = by_start.get(start)
        dlv = delivered.get(irq)
        if kick is None or dlv is None:
            continue
        j = bisect.bisect_left(ends, start)
        end = ends[j] if j < len(ends) else start
        n = bisect.bisect_right(kicks, dlv)
        if n >= len(kicks):
            continue
        rows.append((kick, start, end, irq, dlv, kicks[n]))
    return rows


def how_heard(events, input_prefix):
    """For each 'input: <input_prefix>...' span on the Launcher's track, what the
    read() before it returned."""
    counts = {}
    last = None
    for e in sorted((e for e in events if e.get("ph") in ("E", "X")), key=lambda e: e["ts"]):
        ret = e.get("args", {}).get("returned")
        if ret is not None:
            last = ret
        elif e["ph"] == "X" and e.get("name", "").startswith("input: " + input_prefix):
            key = next((label for pfx, label in HOW if last and last.startswith(pfx)), "other")
            counts[key] = counts.get(key, 0) + 1
    return counts


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", choices=sorted(WORKLOADS), default="direct")
    ap.add_argument("--kernel", default=str(ROOT.parent / "shared" / "linux" / "vmlinux"))
    opts = ap.parse_args()
    kernel = Path(opts.kernel)
    initrd = initramfs_or_skip("bench/iopath.py", kernel)
    if initrd is None:
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
            for _ in range(32):
                f.write(mib)
        script = script_image(tmp / "script.img", WORKLOADS[opts.workload])
        trace = tmp / "trace.json"
        argv = [sys.executable, str(ROOT / "launcher.py"), "--trace=%s" % trace,
                "--trace-events=2000000", "--block=%s" % data, "--block=%s" % script,
                "--initrd=%s" % initrd, "64", str(kernel), "console=hvc0", "pyl.script=vdb"]
        if net:
            argv[2:2] = ["--tunnet=%s" % HOST_IP]
            argv.append("pyl.ip=%s" % GUEST_IP)
            with NetNS("lgio") as ns:
                proc = subprocess.run(ns.argv(argv), cwd=ROOT, capture_output=True, text=True,
                                      stdin=subprocess.DEVNULL, timeout=900)
        else:
            proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True,
                                  stdin=subprocess.DEVNULL, timeout=900)
        if proc.returncode != 0 or "pyl: done vdb status=0" not in proc.stdout:
            print("bench/iopath.py: the Guest did not finish:\n%s%s"
                  % (proc.stdout[-2000:], proc.stderr[-2000:]))
            return 1
        with open(trace) as f:
            events = json.load(f)["traceEvents"]
    print("I/O path, workload %s (%s; load average %.1f on %d CPUs)"
          % (opts.workload, kernel.name, os.getloadavg()[0], os.cpu_count()))
    if net:
        summary = [ln for ln in proc.stdout.splitlines() if "round-trip" in ln]
        print("  the Guest's ping: %s" % (summary[-1].strip() if summary else "(no summary)"))
        counts = how_heard(events, "net")
        total = sum(counts.values()) or 1
        print("  how frames from the host reached the Launcher (%d reads of the tap):" % total)
    else:
        rows = block_steps(events)
        if not rows:
            print("  (no request the trace's arrows connect from kick to delivery)")
            return 1
        print("  %d requests; median step times (us), 90th percentile in brackets:"
              % len(rows))
        names = ("kick -> worker", "worker", "worker -> Launcher", "LHREQ_IRQ -> Guest",
                 "Guest")
        for k, name in enumerate(names):
            d = [r[k + 1] - r[k] for r in rows]
            print("    %-20s %8.1f  [%8.1f]" % (name, statistics.median(d), pct(d, 90)))
        d = [r[5] - r[0] for r in rows]
        print("    %-20s %8.1f  [%8.1f]" % ("kick to next kick", statistics.median(d),
                                            pct(d, 90)))
        counts = how_heard(events, "block vda")
        total = sum(counts.values()) or 1
        print("  how completions reached the Launcher (%d reads of the done pipe):" % total)
    for label, n in sorted(counts.items(), key=lambda kv: -kv[1]):
        print("    %5.1f%%  %s" % (100.0 * n / total, label))
    return 0


if __name__ == "__main__":
    sys.exit(main())
