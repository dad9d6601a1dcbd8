"""A timeline of the I/O path, for bench/iopath.py: where a request's time goes.

Not part of any lguest: an instrument.  It lives in host/ because every process of
ours may mark it and host/ is what they all import (as host.abi).

Off unless the environment variable PYLGUEST_TRACE names a file.  Then every process
(Launcher, its Host thread, Waker, block worker) appends (time, event) pairs to that
file, mapped MAP_SHARED: each process in a slot of its own, so no locking, and a mark
is one clock read and one store.  The clock is CLOCK_MONOTONIC, the same in every
process, so the marks of all of them sort into one timeline.  SLOTS*SLOT_BYTES of
file (64 MiB, sparse).

    TRACE.mark(SLOT_BLOCK, EV["kick"])   # in a hot path: nothing when tracing is off
    read_file(path) -> [(ns, slot, event), ...] sorted by time
"""

import mmap
import os
import struct
import time

#: events, by number (the file stores the number); names for the report
EVENTS = (
    "none",
    "kick",            # Launcher: wrote a kick down the workpipe
    "worker_wake",     # worker: the workpipe read returned
    "worker_req",      # worker: a request served (data in the file / in memory)
    "worker_done",     # worker: wrote a batch of records down the done pipe
    "worker_idle",     # worker: the ring ran dry, kicks on again
    "waker_wake",      # Waker: select() returned with a device fd readable
    "waker_break",     # Waker: sent the BREAK
    "waker_released",  # Waker: the Launcher cleared the BREAK
    "host_event",      # Host thread: saw a BREAK and raised the stop
    "host_out",        # Host: run_guest() is back in the Launcher (EAGAIN or NOTIFY)
    "finish",          # Launcher: handle_io_finish() read the done pipe
    "irq",             # Launcher: LHREQ_IRQ written for the block queue
    "host_in",         # Host: into the Guest (emu_start)
    "halt",            # Host: the Guest halted, the Host sleeps
    "unhalt",          # Host: woken from a halt
    "notify",          # Host: the Guest made a NOTIFY hypercall
    "tap_in",          # Launcher: a frame read from the tap into the Guest
    "tap_out",         # Launcher: a frame written to the tap
    "halt_break",      # Host: a halted sleep read the Waker's BREAK itself
    "halt_input",      # Host: a halted sleep saw the Launcher's input itself
    "host_back",       # Host: emu_start() returned (whatever the reason)
    "deliver",         # Host: a device interrupt (not the clock's) delivered to the Guest
    "recheck",         # Host thread: the recheck tick fired
)
EV = {name: i for i, name in enumerate(EVENTS)}

SLOTS = 8                       # processes (or threads) that may mark
SLOT_BYTES = 8 << 20            # 1 M marks each
_HDR = struct.Struct("<Q")      # per slot: the number of marks so far
_MARK = struct.Struct("<QQ")    # ns, event


class Trace:
    """The shared timeline: mark(slot, event) appends one mark to slot.  A slot is
    written by one thread of one process only (SLOT_* below); the mapping is made at
    import, so forked children share it."""

    def __init__(self, path=None):
        path = path if path is not None else os.environ.get("PYLGUEST_TRACE")
        self._map = None
        if not path:
            return
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                size = SLOTS * SLOT_BYTES
                if os.fstat(fd).st_size < size:
                    os.ftruncate(fd, size)
                self._map = mmap.mmap(fd, size, mmap.MAP_SHARED)
            finally:
                os.close(fd)
        except OSError:
            self._map = None        # a timeline is never worth dying for

    def mark(self, slot, event):
        m = self._map
        if m is None:
            return
        base = slot * SLOT_BYTES
        (n,) = _HDR.unpack_from(m, base)
        off = base + _HDR.size + n * _MARK.size
        if off + _MARK.size <= base + SLOT_BYTES:
            _MARK.pack_into(m, off, time.monotonic_ns(), event)
            _HDR.pack_into(m, base, n + 1)


def read_file(path):
    """Every mark in the file: [(ns, slot, event name)] in time order."""
    out = []
    with open(path, "rb") as f:
        data = f.read()
    for slot in range(SLOTS):
        base = slot * SLOT_BYTES
        if base + _HDR.size > len(data):
            break
        (n,) = _HDR.unpack_from(data, base)
        for i in range(n):
            ns, ev = _MARK.unpack_from(data, base + _HDR.size + i * _MARK.size)
            out.append((ns, slot, EVENTS[ev] if ev < len(EVENTS) else str(ev)))
    out.sort()
    return out


#: slots, by who writes them
SLOT_LAUNCHER, SLOT_HOST_THREAD, SLOT_WAKER, SLOT_BLOCK = 0, 1, 2, 3

#: the timeline (mapped at import, so forks inherit the map)
TRACE = Trace()
