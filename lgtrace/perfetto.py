"""Writing the trace: Chrome's JSON trace-event format, which ui.perfetto.dev and
chrome://tracing open.

One JSON object, {"traceEvents": [...], "otherData": {...}}.  Timestamps are
microseconds from start(), with three decimals (nanoseconds).  Tracks:

  Launcher process   "Guest vCPU 0"   the exits as B/E spans (a HALT's lasts the
                                      sleep), the async ring's entries, interrupts
                                      delivered or held back, events taken
                     main thread      "read /dev/lguest" spans (the Guest runs inside
                                      them), kicks and input handling (X spans),
                                      console/net bytes, LHREQ_IRQ, LHREQ_BREAK 0
                     lguest-host      the helper thread raising TIMER, BREAK, ...
  Waker              its thread       BREAK spans, from the readable fds until the
                                      Launcher released it
  block I/O worker   its thread       a span per request, kicks read

Every track's events are in time order, and every B has its E: an E whose B fell
out of the bounded buffer is dropped, and a span still open at the end (the last
exit, a request a SIGKILLed worker never finished) ends at the end of the trace
with "unfinished": true.  Flow arrows (v1 flow events: "s" binds to the slice
open on its track, "f" with "bp": "e" to the one enclosing it, each placed 2 ns
into its slice, which Perfetto follows) go kick -> the worker's request -> the LHREQ_IRQ reporting it ->
the interrupt's delivery; the clock's TIMER -> IRQ 0; the Waker's BREAK -> the
helper thread -> the run loop taking it.
"""

import collections
import heapq
import json

from devices.abi import (VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
                         VIRTIO_BLK_T_OUT)
from host.abi import FIRST_EXTERNAL_VECTOR, LHCALL_NOTIFY, LHCALL_SET_CLOCKEVENT
from host.channel import BREAK

from .host import EVENT_BITS, exit_name, hcall_args, hcall_name
from .names import Names
from .record import K_BLK, K_BLK_END, K_BREAK, K_KICKS, K_RELEASED, VCPU_TID
from .symbols import Symbols

BLK_TYPES = {VIRTIO_BLK_T_IN: "blk read", VIRTIO_BLK_T_OUT: "blk write",
             VIRTIO_BLK_T_FLUSH: "blk flush", VIRTIO_BLK_T_GET_ID: "blk get_id"}
BLK_STATUS = {0: "VIRTIO_BLK_S_OK", 1: "VIRTIO_BLK_S_IOERR", 2: "VIRTIO_BLK_S_UNSUPP"}
#: Flow events sit this far into the slice they bind to: 2 ns, so that a reader which
#: truncates (rather than rounds) microseconds * 1000 still puts them after its start.
FLOW_NS = 2


def _bits(bits):
    return ", ".join(name for bit, name in EVENT_BITS if bits & bit) or "none"


class _Trace:
    def __init__(self, run, names, t_end):
        self.t0 = run["t0"]
        self.t_end = t_end
        self.names = names
        self.tracks = {}        # (pid, tid) -> [(ts_ns, event dict)]
        self.flows = {}         # (pid, tid) -> [(ts_ns, event dict)]
        self.flow_id = 0

    def us(self, ts):
        return round((ts - self.t0) / 1000, 3)

    def add(self, pid, tid, ts, ph, name=None, args=None, **extra):
        ev = {"ph": ph, "pid": pid, "tid": tid, "ts": self.us(ts)}
        if name is not None:
            ev["name"] = name
        if args:
            ev["args"] = args
        ev.update(extra)
        self.tracks.setdefault((pid, tid), []).append((ts, ev))

    def flow(self, name, src, dst):
        """An arrow from the slice beginning at src to the one beginning at dst; src and
        dst are (pid, tid, ts) or None (then there is no arrow: it fell out of the ring)."""
        if src is None or dst is None:
            return
        self.flow_id += 1
        for (pid, tid, ts), ph in ((src, "s"), (dst, "f")):
            ev = {"ph": ph, "pid": pid, "tid": tid, "ts": self.us(ts + FLOW_NS),
                  "cat": "lguest", "name": name, "id": self.flow_id}
            if ph == "f":
                ev["bp"] = "e"
            self.flows.setdefault((pid, tid), []).append((ts + FLOW_NS, ev))

    def events(self):
        """Every track's events in time order, B/E balanced."""
        for key, evs in self.tracks.items():
            flows = sorted(self.flows.get(key, ()), key=lambda e: e[0])
            depth = 0
            for ts, ev in heapq.merge(evs, flows, key=lambda e: e[0]):
                ph = ev["ph"]
                if ph == "B":
                    depth += 1
                elif ph == "E":
                    if not depth:
                        continue          # its B is older than what we kept
                    depth -= 1
                yield ev
            end = max(self.t_end, evs[-1][0] if evs else self.t_end)
            for _ in range(depth):
                yield {"ph": "E", "pid": key[0], "tid": key[1], "ts": self.us(end),
                       "args": {"unfinished": True}}


def write(f, run, events, full, rings, thread_names, devices, t_end):
    """Write the trace to the text file f.  run: record.RUN; events: the Launcher's
    tuples (full: the deque dropped older ones); rings: record.read_rings();
    thread_names: {tid: name}; devices: the DeviceList or None; t_end: finish time."""
    names = Names(devices)
    tr = _Trace(run, names, t_end)
    anchors = collections.defaultdict(dict)   # what arrows start or end at: (pid, tid, ts)
    lists = collections.defaultdict(list)
    _launcher(tr, run, events, names, anchors, lists)
    children = _children(tr, rings, names, anchors, lists)
    _flows(tr, anchors, lists)
    _write_json(f, tr, run, run["pid"], thread_names, rings, names, full, len(events),
                children)


def _launcher(tr, run, events, names, anchors, lists):
    """The Launcher's events: the vCPU track, its threads' tracks."""
    lpid = run["pid"]
    v = VCPU_TID
    syms = Symbols(run["kernel"]) if run.get("kernel") else None
    placed = {}

    def where(eip):
        """"0xc1000054 startup_32+0x54", or just the address without symbols."""
        if eip not in placed:
            name = syms.where(eip) if syms is not None else None
            placed[eip] = "%#x %s" % (eip, name) if name else "%#x" % eip
        return placed[eip]

    for ev in events:
        what, ts = ev[0], ev[1]
        if what == "hcall":
            _, _, args, eip, text = ev
            call = args[0]
            a = hcall_args(call, args)
            if call == LHCALL_NOTIFY:
                a["means"] = names.notify(args[1])
                if text is not None and a["means"] == "early console string":
                    a["text"] = text.split(b"\0", 1)[0].decode("utf-8", "replace")
            elif call == LHCALL_SET_CLOCKEVENT:
                a["clock event"] = ("armed: IRQ 0 in %.1f us" % (args[1] / 1000)
                                    if args[1] else "cancelled")
            a["eip"] = where(eip)
            tr.add(lpid, v, ts, "B", hcall_name(call), a)
        elif what == "end":
            tr.add(lpid, v, ts, "E")
        elif what == "trap":
            _, _, vec, eip, err, cr2 = ev
            a = {"vector": vec, "eip": where(eip), "errcode": "%#x" % err}
            if cr2 is not None:
                a["cr2"] = "%#x" % cr2
            tr.add(lpid, v, ts, "B", exit_name((1 << 32) | vec), a)
        elif what == "int":
            tr.add(lpid, v, ts, "B", "int %#x" % ev[2],
                   {"vector": ev[2], "next eip": where(ev[3])})
        elif what == "stop":
            tr.add(lpid, v, ts, "B", exit_name(ev[2]), {"eip": where(ev[3])})
        elif what == "async":
            slot, args = ev[2], ev[3]
            a = dict(hcall_args(args[0], args), slot=slot)
            if args[0] == LHCALL_NOTIFY:
                a["means"] = names.notify(args[1])
            tr.add(lpid, v, ts, "i", hcall_name(args[0]) + " (async ring)", a, s="t")
        elif what == "irq":
            _, _, irq, why, ids = ev
            a = {"irq": irq, "vector": "%#x" % (FIRST_EXTERNAL_VECTOR + irq),
                 "source": names.irq(irq)}
            if why is None:
                tr.add(lpid, v, ts, "i", "IRQ %d delivered" % irq, a, s="t")
                if ids:
                    lists["deliveries"].append(((lpid, v, ts), ids))
            else:
                a["why"] = why
                tr.add(lpid, v, ts, "i", "IRQ %d held back: %s" % (irq, why), a, s="t")
        elif what == "taken":
            _, _, bits, cause = ev
            a = {"events": _bits(bits)}
            if cause:
                a["clock event"] = "fired: IRQ 0 pending"
                anchors["cause"][cause] = (lpid, v, ts)
            if bits & BREAK:
                lists["break taken"].append((lpid, v, ts))
            tr.add(lpid, v, ts, "i", "run loop takes " + _bits(bits), a, s="t")
        elif what == "raised":
            _, _, tid, bits, seq = ev
            tr.add(lpid, tid, ts, "i", "raise " + _bits(bits), {"events": _bits(bits)},
                   s="t")
            if seq:
                anchors["break raised"][seq] = (lpid, tid, ts)
        elif what == "read":
            tr.add(lpid, ev[2], ts, "B", "read /dev/lguest")
        elif what == "read_end":
            res = ev[3]
            if isinstance(res, int):
                res = "NOTIFY %#x: %s" % (res, names.notify(res))
            elif res == "EAGAIN":
                res = "EAGAIN: a BREAK (the Waker saw input)"
            elif res == "EAGAIN INPUT":
                res = "EAGAIN: input the halted Host saw itself (no BREAK)"
            tr.add(lpid, ev[2], ts, "E", args={"returned": res})
        elif what == "kick":
            _, _, tid, irq, seq, dur = ev
            tr.add(lpid, tid, ts, "X", "kick: " + names.irq(irq),
                   {"irq": irq, "kick": seq}, dur=round(dur / 1000, 3))
            anchors["kick"][(irq, seq)] = (lpid, tid, ts)
        elif what == "input":
            _, _, tid, fd, dur = ev
            tr.add(lpid, tid, ts, "X", "input: " + names.fd.get(fd, "fd %d" % fd),
                   {"fd": fd}, dur=round(dur / 1000, 3))
        elif what == "xfer":
            _, _, tid, irq, n = ev
            tr.add(lpid, tid, ts, "i", "%s: %d bytes" % (names.irq(irq), n),
                   {"bytes": n, "irq": irq}, s="t")
        elif what == "lhreq_irq":
            _, _, tid, irq, rid, reqs = ev
            tr.add(lpid, tid, ts, "i", "LHREQ_IRQ %d" % irq,
                   {"irq": irq, "queue": names.irq(irq)}, s="t")
            anchors["cause"][rid] = (lpid, tid, ts)
            if reqs:
                lists["reported"].append(((lpid, tid, ts), reqs))
        elif what == "break0":
            tr.add(lpid, ev[2], ts, "i", "LHREQ_BREAK 0: the Waker may go on", s="t")


def _children(tr, rings, names, anchors, lists):
    """The Waker's and the block workers' records; returns what otherData says of them."""
    children = []
    for pid, kind, dropped, recs in rings:
        label = names.worker.get(pid)
        children.append({"pid": pid, "process": kind, "records": len(recs),
                         "dropped": dropped})
        for ts, k, a, b, c, d, e, g in recs:
            if k == K_BREAK:
                fds = (c, d, e, g)[:b]
                what = ", ".join("fd %d: %s" % (fd, names.fd.get(fd, "?")) for fd in fds)
                tr.add(pid, pid, ts, "B", "BREAK", {"readable": what, "break": a})
                lists["waker breaks"].append((a, (pid, pid, ts)))
            elif k == K_RELEASED:
                tr.add(pid, pid, ts, "E", args={
                    "released": "by LHREQ_BREAK 0" if a else "the Launcher is gone"})
            elif k == K_KICKS:
                what = ["%d kick%s" % (a, "" if a == 1 else "s")] if a else []
                what += ["a reset"] if b == 1 else ["%d resets" % b] if b else []
                tr.add(pid, pid, ts, "i", "workpipe: " + ", ".join(what),
                       {"kicks": a, "resets": b, "kicks so far": c}, s="t")
            elif k == K_BLK:
                tr.add(pid, pid, ts, "B", BLK_TYPES.get(a, "blk type %d" % a),
                       {"sector": b, "length": c, "request": e, "kick": d,
                        "device": label or "?"})
                anchors["request"][(pid, e)] = (pid, pid, ts)
                if d:
                    lists["kicked"].append(((g, d), (pid, pid, ts)))
            elif k == K_BLK_END:
                tr.add(pid, pid, ts, "E", args={"status": BLK_STATUS.get(a, a)})
    return children


def _flows(tr, anchors, lists):
    """The arrows, from what the records say caused what."""
    for key, dst in lists["kicked"]:
        tr.flow("kick -> request", anchors["kick"].get(key), dst)
    for src, reqs in lists["reported"]:
        for req in reqs:
            tr.flow("request -> LHREQ_IRQ", anchors["request"].get(tuple(req)), src)
    for dst, ids in lists["deliveries"]:
        for i in ids:
            tr.flow("interrupt -> delivery", anchors["cause"].get(i), dst)
    # The helper thread's n-th BREAK is the Waker's n-th; the run loop takes it next.
    taken = iter(lists["break taken"])
    at = next(taken, None)
    raised = anchors["break raised"]
    for seq in sorted(raised):
        src = raised[seq]
        while at is not None and at[2] < src[2]:
            at = next(taken, None)
        tr.flow("BREAK -> run loop", src, at)
    for seq, src in lists["waker breaks"]:
        tr.flow("Waker BREAK -> helper thread", src, raised.get(seq))


def _write_json(f, tr, run, lpid, thread_names, rings, names, full, kept, children):
    meta = [
        {"ph": "M", "pid": lpid, "tid": lpid, "name": "process_name",
         "args": {"name": "Launcher (launcher.py)"}},
        {"ph": "M", "pid": lpid, "tid": lpid, "name": "process_sort_index",
         "args": {"sort_index": 0}},
        {"ph": "M", "pid": lpid, "tid": VCPU_TID, "name": "thread_name",
         "args": {"name": "Guest vCPU 0: exits"}},
        {"ph": "M", "pid": lpid, "tid": VCPU_TID, "name": "thread_sort_index",
         "args": {"sort_index": -1}},
    ]
    for tid, name in sorted(thread_names.items()):
        if tid == lpid:
            name = "Launcher: run_guest()"
        elif name == "lguest-host":
            name = "Host helper thread (lguest-host)"
        meta.append({"ph": "M", "pid": lpid, "tid": tid, "name": "thread_name",
                     "args": {"name": name}})
    if lpid not in thread_names:
        meta.append({"ph": "M", "pid": lpid, "tid": lpid, "name": "thread_name",
                     "args": {"name": "Launcher: run_guest()"}})
    for i, (pid, kind, _, _) in enumerate(rings):
        pname = ("block I/O worker (%s)" % names.worker[pid][6:] if pid in names.worker
                 else "Waker" if kind == "waker" else kind)
        meta += [{"ph": "M", "pid": pid, "tid": pid, "name": "process_name",
                  "args": {"name": pname}},
                 {"ph": "M", "pid": pid, "tid": pid, "name": "process_sort_index",
                  "args": {"sort_index": i + 1}},
                 {"ph": "M", "pid": pid, "tid": pid, "name": "thread_name",
                  "args": {"name": pname}}]
    # traceEvents first: Perfetto's importer stops at a top-level key it doesn't know,
    # and takes "displayTimeUnit" as the unit of every ts (so there is none).
    f.write('{"traceEvents": [\n')
    enc = json.JSONEncoder(separators=(",", ":")).encode
    f.write(",\n".join(enc(ev) for ev in meta))
    for ev in tr.events():
        f.write(",\n" + enc(ev))
    f.write('\n],\n"otherData": ')
    f.write(json.dumps({
        "pylguest": "launcher.py --trace (issue 17)",
        "command": " ".join(run.get("argv", [])),
        "launcher events kept": kept,
        "launcher events dropped": "some (the oldest)" if full else "none",
        "bound": "the last %d events of the Launcher, the last %d of each child"
                 % (run["limit"], run["ring_cap"]),
        "children": children}))
    f.write("}\n")
