"""Counters for the benchmarks: how many BREAKs, kicks, done-pipe writes.

Off unless the environment variable PYLGUEST_STATS names a file.  Then each
process (Launcher, Waker, block worker) maps that file MAP_SHARED and bumps
its own u64 slots in it; a benchmark reads the file after the run.  A slot
is only ever written by one process, so no locking is needed, and a bump is
one struct.pack_into: cheap enough to leave in the hot paths.
"""

import mmap
import os
import struct

#: slot names, in file order; each an unsigned 64-bit counter
SLOTS = (
    "breaks",           # Waker: LHREQ_BREAK writes
    "blk_wakeups",      # worker: reads of the workpipe that returned data
    "blk_kicks",        # worker: kick bytes read from the workpipe
    "blk_requests",     # worker: requests completed
    "blk_done_writes",  # worker: write()s to the done pipe
    "blk_done_bytes",   # worker: bytes written to the done pipe
    "blk_finish_calls", # Launcher: handle_io_finish() calls
    "blk_irqs",         # Launcher: block interrupts triggered
    "blk_done_seen",    # Launcher: completions read from the done pipe
    "blk_rechecks",     # worker: passes the idle recheck started, no kick
    "breaks_skipped",   # Waker: woken, but the Launcher had served it already
    "breaks_deferred",  # Waker: woken while the Host waited in HALT for that input
)
_Q = struct.Struct("<Q")
SIZE = _Q.size * len(SLOTS)


class Stats:
    """The counters: bump(name, n=1), read() -> {name: value}."""

    def __init__(self, path=None):
        self._map = None
        path = path if path is not None else os.environ.get("PYLGUEST_STATS")
        if not path:
            return
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                if os.fstat(fd).st_size < SIZE:
                    os.ftruncate(fd, SIZE)
                self._map = mmap.mmap(fd, SIZE, mmap.MAP_SHARED)
            finally:
                os.close(fd)
        except OSError:
            self._map = None        # statistics are never worth dying for

    def bump(self, name, n=1):
        m = self._map
        if m is None:
            return
        off = SLOTS.index(name) * _Q.size
        _Q.pack_into(m, off, _Q.unpack_from(m, off)[0] + n)

    def read(self):
        if self._map is None:
            return {}
        return {name: _Q.unpack_from(self._map, i * _Q.size)[0]
                for i, name in enumerate(SLOTS)}


def read_file(path):
    """The counters in a stats file, as {name: value} (zeros if short)."""
    with open(path, "rb") as f:
        data = f.read(SIZE).ljust(SIZE, b"\0")
    return {name: _Q.unpack_from(data, i * _Q.size)[0]
            for i, name in enumerate(SLOTS)}


#: the process-wide counters (mapped at import, so forks inherit the map)
STATS = Stats()
