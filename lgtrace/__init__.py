"""Watching the hypervisor work: `--trace=FILE` and `--stats` (issue 17).

    launcher.py --trace=boot.json --stats --block=disk.img 64 vmlinux ...

`--trace` writes a Chrome/Perfetto JSON trace (open it in ui.perfetto.dev or
chrome://tracing) of what the Host, the Launcher, the Waker and the block I/O
worker did, in lguest's own words: every exit of the Guest (LHCALL_* with its
arguments, traps with vector, eip, error code and cr2, stops for events), each
entry of the async hypercall ring, every interrupt delivered or held back and
why, the clock event, BREAKs, kicks, block requests, console and net bytes, and
arrows from a kick to the worker's request to the interrupt that reports it.
`--stats` prints at exit a table like `perf kvm stat report`'s: each exit kind
with count and time, the hypercalls by number, the interrupts, the virtqueues.

Cost.  Every instrumentation site is one line,

    if lgtrace.on: lgtrace.kick(lg, vq)

so with neither option the Host and the devices pay one test of a module
attribute at each site, and the per-trap hook none at all: the traced hook
(trap_hook) is installed instead of the plain one only when `on`.

Where events go (record.py).  The Launcher process (its main thread runs the
Guest; the Host's helper thread raises its events) appends tuples to a deque
that keeps the last N.  The Waker and every block worker are forked
processes: each writes fixed-size binary records into a ring of its own in
one MAP_SHARED mapping made before the first fork, and counts into shared
counters there.  At exit, after the children are reaped, the Launcher reads
the rings and writes the one JSON file (perfetto.py) and the table
(stats.py).  A child that is SIGKILLed loses nothing it finished recording
(a record counts only once it is whole); a span it had begun is closed at the
end of the trace and marked unfinished.  A Launcher that is SIGKILLed writes
nothing but the empty trace it started the file with.

Modules: record.py (the clock, the deque, the rings, the counters, start and
finish), host.py (the Host's events: exits, hypercalls, interrupts, the helper
thread), devices.py (the Launcher's devices, the Waker, the block worker),
perfetto.py (the JSON writer, with the flow arrows), stats.py (the table).
"""

#: --trace or --stats: the one flag every instrumentation site tests.
on = False
#: --trace: record events, not only counts.
tracing = False

from .record import finish, start                                    # noqa: E402
from .host import (async_hcall, entering, interrupt, lhreq_break,     # noqa: E402
                   lhreq_irq, raised, read, stopped, taken, trap_hook)
from .devices import (blk_request, blk_status, child_forked,          # noqa: E402
                      child_started, completed, handle_input, kick, transfer,
                      waker_break, waker_released, worker_kicks)

__all__ = ["on", "tracing", "start", "finish", "trap_hook", "entering", "stopped",
           "taken", "async_hcall", "interrupt", "raised", "read", "lhreq_irq",
           "lhreq_break", "kick", "handle_input", "transfer", "completed",
           "child_started", "child_forked", "waker_break", "waker_released",
           "worker_kicks", "blk_request", "blk_status"]
