"""The Launcher's devices, the Waker and the block I/O worker.

In the Launcher (events into the deque, on the calling thread's track):

    kick(lg, vq)            a NOTIFY of a virtqueue: runs vq.handle_output in a span
    handle_input(lg, dev)   after a BREAK, a readable fd: runs dev.handle_input in a span
    transfer(vq, n)         a console or net buffer moved n bytes
    completed(dev, n)       the block worker's done pipe said n requests are complete

In the children (records into their ring, counts into the shared counters):

    child_started(name) / child_forked(pid)   fork_child(): who gets which ring
    waker_break(fds) / waker_released(ok)     the Waker's BREAK, from the readable
                                              fds to the Launcher releasing it
    worker_kicks(cmds)                        the worker read kicks off its workpipe
    blk_request(vq, rtype, sector, iov)       one request, begun ...
    blk_status(vq, status)                    ... and finished

The arrows: the Launcher numbers each virtqueue's kicks (1, 2, ...) and the block
worker counts the kick bytes it reads, so a request knows the kick that woke its
pass; the worker numbers its requests, and the Launcher counts the completions
coming back down the done pipe in the same order, so an LHREQ_IRQ knows the
requests it reports.  perfetto.py draws them.
"""

import lgtrace

from . import record
from .host import STATE
from .record import (BYTES, K_BLK, K_BLK_END, K_BREAK, K_KICKS, K_RELEASED, KICKS,
                     REQUESTS, WAKES, counter, now)

# --- the Launcher ------------------------------------------------------------------------
_kicks = {}          # irq -> kicks so far (the numbers the worker counts too)
_completions = {}    # irq -> completions so far (the worker's request numbers)


def _span(what, args, handler, *handler_args):
    """Run handler(*handler_args) as a span (what, start, thread, *args, duration)
    of the Launcher's events, or plainly when only --stats is on."""
    events = record.EVENTS
    if events is None:
        return handler(*handler_args)
    ev = [what, now(), record.thread_tid(), *args, 0]
    events.append(ev)
    try:
        return handler(*handler_args)
    finally:
        ev[-1] = now() - ev[1]


def kick(lg, vq):
    """devices.handle_output(): the Guest kicked vq; run its handler in a span."""
    irq = vq.irq
    record.COUNTERS[counter(irq, KICKS)] += 1
    seq = _kicks[irq] = _kicks.get(irq, 0) + 1
    return _span("kick", (irq, seq), vq.handle_output, lg, vq)


def handle_input(lg, dev):
    """devices.handle_input(): dev's fd is readable; run its handler in a span."""
    return _span("input", (dev.fd,), dev.handle_input, lg, dev)


def transfer(vq, nbytes):
    """A console or network buffer went through vq: nbytes of data."""
    irq = vq.irq
    c = record.COUNTERS
    c[counter(irq, REQUESTS)] += 1
    c[counter(irq, BYTES)] += max(nbytes, 0)
    if record.EVENTS is not None:
        record.EVENTS.append(("xfer", now(), record.thread_tid(), irq, nbytes))


def completed(dev, n):
    """The done pipe of dev's worker reported n more requests complete: the next
    LHREQ_IRQ of its queue reports them."""
    if not n or record.EVENTS is None:
        return
    irq = dev.vq.irq
    first = _completions.get(irq, 0) + 1
    _completions[irq] = first + n - 1
    pid = getattr(dev.priv, "pid", 0) or 0
    STATE["pending"].setdefault(irq, []).extend((pid, r) for r in range(first, first + n))


# --- the children -------------------------------------------------------------------------
def child_started(name):
    """fork_child(), in the child: this process records into its own ring."""
    record.child_started(name)


def child_forked(pid):
    """fork_child(), in the Launcher."""
    record.child_forked(pid)


_breaks = [0]


def waker_break(fds):
    """The Waker found fds readable and is about to BREAK the Guest out."""
    record.COUNTERS[WAKES] += 1
    if lgtrace.tracing:
        _breaks[0] += 1
        fds = sorted(fds)[:4]
        record.child_record(K_BREAK, _breaks[0], len(fds), *fds)


def waker_released(ok):
    """The BREAK is over: the Launcher cleared it (ok), or is gone."""
    if lgtrace.tracing:
        record.child_record(K_RELEASED, 1 if ok else 0)


_worker = {"kicks": 0, "requests": 0, "length": 0}


def worker_kicks(cmds):
    """The block worker read cmds (bytes) off its workpipe: kicks and resets."""
    from devices.block import WORK_RESET
    resets = cmds.count(WORK_RESET)
    kicks = len(cmds) - resets
    _worker["kicks"] += kicks
    if lgtrace.tracing:
        record.child_record(K_KICKS, kicks, resets, _worker["kicks"])


def blk_request(vq, rtype, sector, iov):
    """service_io() is about to do request rtype at sector; its data buffers are iov
    less the header (first) and the status byte (last)."""
    w = _worker
    w["requests"] += 1
    w["length"] = length = sum(len(b) for b in iov[1:-1])
    if lgtrace.tracing:
        record.child_record(K_BLK, rtype, sector, length, w["kicks"], w["requests"],
                            vq.irq)


def blk_status(vq, status):
    """... and has done it, with this virtio_blk status (0 is VIRTIO_BLK_S_OK)."""
    c = record.COUNTERS
    c[counter(vq.irq, REQUESTS)] += 1
    if status == 0:
        c[counter(vq.irq, BYTES)] += _worker["length"]
    if lgtrace.tracing:
        record.child_record(K_BLK_END, status, _worker["length"], _worker["requests"])
