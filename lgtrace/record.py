"""Where the events and the counts go, in every process.

The clock is CLOCK_MONOTONIC in nanoseconds (time.monotonic_ns): one clock for
every process on the machine, so the Launcher can put the children's records
beside its own.  ts 0 of the trace is start().

  the Launcher   EVENTS, a deque of tuples (the last `limit`); the first item
                 says what it is, the second is its time (host.py and
                 devices.py make them, perfetto.py reads them)
  a child        one ring of RING_RECORDS fixed-size records in the shared
                 mapping: RECORD = (ts, kind, six signed 64-bit arguments);
                 the ring's header counts the records written, and a record
                 counts only once it is whole, so a SIGKILL can't tear one
  everyone       COUNTERS, u64s in the same mapping: per virtqueue (by its
                 IRQ) kicks, interrupts, requests and bytes; the Waker's
                 wake-ups.  Each counter has one writer process.

The mapping is anonymous and MAP_SHARED, made by start() before the block
workers and the Waker are forked, like Guest memory: the children inherit it,
and it outlives them.
"""

import collections
import mmap
import os
import stat
import struct
import sys
import threading
import time

import lgtrace

now = time.monotonic_ns

#: Default bound: the last this many events of the Launcher (a Linux boot to
#: poweroff makes about 40000; each takes some 200 bytes of memory until the end, and
#: 100-150 of file); each child keeps min(limit, RING_RECORDS) records of 64 bytes (a
#: block request is two).
DEFAULT_EVENTS = 250_000
RING_RECORDS = 262144

#: tid of the Guest's own track ("Guest vCPU 0") in the Launcher's process: above
#: any real thread id (Linux's pid_max is at most 2**22).
VCPU_TID = (1 << 22) + 1

# --- the shared mapping ------------------------------------------------------------
RECORD = struct.Struct("<QH6x6q")            # 64 bytes
RING_HEADER = struct.Struct("<QQ48s")        # written, pid, name: 64 bytes
NIRQ = 32
KICKS, INTERRUPTS, REQUESTS, BYTES = range(4)
WAKES = NIRQ * 4                             # the Waker: times it woke for input
NCOUNTERS = WAKES + 8

# Kinds of child records (devices.py writes them, perfetto.py reads them).
K_BREAK, K_RELEASED, K_KICKS, K_BLK, K_BLK_END = range(1, 6)

#: The Launcher's events (None until start(), or with --stats alone).
EVENTS = None
#: u64 memoryview over the counters (None until start()).
COUNTERS = None
#: what perfetto.py needs to know of the run
RUN = {}

_map = None
_nrings = 0
_ring_cap = 0
_rings_off = 0
_next_ring = 0       # the Launcher: the ring the next child gets
_ring = None         # a child: (offset of its records, memoryview of its count)
_trace_fd = None
_thread_names = {}


def event_limit(text):
    """The N of --trace-events=N (text) as an int > 0; ValueError, whose text is the
    Launchers' one line, otherwise."""
    if not (text.isascii() and text.isdigit() and int(text) > 0):
        raise ValueError("Trace size '%s' is not a positive number of events" % text)
    return int(text)


def counter(irq, what):
    """Index in COUNTERS of virtqueue counter `what` (KICKS...) for the queue on irq."""
    return irq * 4 + what


def start(trace_fd=None, stats=False, limit=DEFAULT_EVENTS, children=0, kernel=None):
    """Turn tracing (trace_fd: an open, writable file descriptor we now own) and/or
    statistics on.  children: how many processes will be forked (the Waker and one
    worker per block device), each of which gets a ring.  kernel: the Guest's kernel
    file, whose symbols (if it is an ELF vmlinux) name the eips in the trace.  Call before any fork and
    before the Guest exists (the Host installs its traced hook at LHREQ_INITIALIZE).
    Writes an empty trace at once: that is what a SIGKILLed Launcher leaves."""
    global EVENTS, COUNTERS, _map, _nrings, _ring_cap, _rings_off, _trace_fd
    if trace_fd is None and not stats:
        return
    _nrings = children if trace_fd is not None else 0
    _ring_cap = min(limit, RING_RECORDS)
    _rings_off = NCOUNTERS * 8
    size = _rings_off + _nrings * (RING_HEADER.size + _ring_cap * RECORD.size)
    _map = mmap.mmap(-1, max(size, mmap.PAGESIZE), mmap.MAP_SHARED,
                     mmap.PROT_READ | mmap.PROT_WRITE)
    COUNTERS = memoryview(_map)[:NCOUNTERS * 8].cast("Q")
    if trace_fd is not None:
        _trace_fd = trace_fd
        EVENTS = collections.deque(maxlen=limit)
        if _regular(trace_fd):
            try:
                os.ftruncate(trace_fd, 0)
                os.write(trace_fd, b'{"traceEvents": []}\n')
            except OSError:
                pass
        lgtrace.tracing = True
    RUN.update(pid=os.getpid(), t0=now(), limit=limit, ring_cap=_ring_cap,
               argv=list(sys.argv), stats=stats, kernel=kernel)
    lgtrace.on = True


def thread_tid():
    """This thread's id, its name noted for the trace's track names."""
    tid = threading.get_native_id()
    if tid not in _thread_names:
        _thread_names[tid] = threading.current_thread().name
    return tid


# --- the children's side -------------------------------------------------------------
def child_started(name):
    """In a freshly forked child: take the ring the Launcher set aside for it."""
    global _ring, EVENTS
    EVENTS = None                      # the Launcher's copy is not ours to add to
    if _next_ring >= _nrings:
        return                         # no ring left: counts only
    off = _rings_off + _next_ring * (RING_HEADER.size + _ring_cap * RECORD.size)
    RING_HEADER.pack_into(_map, off, 0, os.getpid(), name.encode()[:48])
    _ring = (off + RING_HEADER.size, memoryview(_map)[off:off + 8].cast("Q"))


def child_forked(pid):
    """In the Launcher, after a fork: the next child gets the next ring."""
    global _next_ring
    _next_ring += 1


def child_record(kind, a=0, b=0, c=0, d=0, e=0, f=0):
    """Append one record to this child's ring (the oldest goes when it is full).
    The record is written first, then the count that makes it visible."""
    ring = _ring
    if ring is None:
        return
    base, count = ring
    n = count[0]
    RECORD.pack_into(_map, base + (n % _ring_cap) * RECORD.size,
                     now(), kind, a, b, c, d, e, f)
    count[0] = n + 1


def read_rings():
    """Every child's ring: [(pid, name, dropped, [(ts, kind, a..f), ...])]."""
    out = []
    for i in range(_nrings):
        off = _rings_off + i * (RING_HEADER.size + _ring_cap * RECORD.size)
        written, pid, name = RING_HEADER.unpack_from(_map, off)
        if not pid:
            continue
        n = min(written, _ring_cap)
        recs = []
        for j in range(written - n, written):
            recs.append(RECORD.unpack_from(
                _map, off + RING_HEADER.size + (j % _ring_cap) * RECORD.size))
        out.append((pid, name.rstrip(b"\0").decode(errors="replace"), written - n, recs))
    return out


# --- the end --------------------------------------------------------------------------
def finish(devices=None):
    """At the Launcher's exit, after its children are gone: write the trace and print
    the table.  Recording stops first (a thread still running the Guest may pass a
    site or two more; what it adds now is not written).  devices: the DeviceList,
    for naming queues, fds and NOTIFY addresses.  Never raises: a trace that can't
    be written is one "lguest:" warning on stderr."""
    global _trace_fd
    if not lgtrace.on or RUN.get("pid") != os.getpid():
        return
    lgtrace.on = False
    lgtrace.tracing = False
    from . import host
    t_end = now()
    host.close_open_exit(t_end)
    events = list(EVENTS) if EVENTS is not None else []
    full = EVENTS is not None and len(events) == EVENTS.maxlen
    counters = list(COUNTERS)
    if _trace_fd is not None:
        from . import perfetto
        fd, _trace_fd = _trace_fd, None
        try:
            regular = _regular(fd)
            with os.fdopen(fd, "w", buffering=1 << 20) as f:
                if regular:
                    f.seek(0)
                    f.truncate()
                perfetto.write(f, RUN, events, full, read_rings(), dict(_thread_names),
                               devices, t_end)
        except Exception as e:         # a full disk, a bug: never a traceback at exit
            if os.environ.get("PYLGUEST_TRACEBACK"):
                import traceback
                traceback.print_exc()
            _warn("Writing trace: %s" % (getattr(e, "strerror", None) or e))
    if RUN.get("stats") and host.STATE["first"] is not None:     # the Guest ran
        from . import stats
        try:
            sys.stdout.flush()
            stats.report(sys.stderr, RUN, counters, devices, t_end)
            sys.stderr.flush()
        except Exception as e:
            _warn("Printing statistics: %s" % e)


def _regular(fd):
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        return False


def _warn(msg):
    try:
        os.write(2, ("lguest: %s\n" % msg).encode(errors="replace"))
    except OSError:
        pass
