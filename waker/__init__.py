"""The Waker: a process that watches the device fds while the Guest runs.

Running the Guest blocks the Launcher inside the Host's read(), so it can't
also watch stdin, the TAP device and the block worker's done pipe.  As in
the C Launcher (lguest.c, "The Waker"), a forked process select()s on all of
them and, when one is readable, writes LHREQ_BREAK 1 to the Host: the
Launcher's read() returns EAGAIN, it serves the input (handle_input) and
writes LHREQ_BREAK 0, which lets the Waker go back to select().

The Launcher steers it with C ints down a pipe: fd >= 0 means "watch fd",
-fd-1 means "stop watching fd" (-1, since 0 is stdin), and EOF means the
Launcher has died, so the Waker quietly follows.
"""

import errno
import os
import select
import struct

import lgtrace
from devices.errors import err
from .procs import (CHILDREN, children_alive, end_children, fork_child,
                    reap_children, stop_children)
from .stats import STATS

try:
    from host.abi import LHREQ_BREAK
except ImportError:             # host/ not written yet: the Linux 3.16 value
    LHREQ_BREAK = 3

_INT = struct.Struct("i")
#: how long we leave readable input to a Launcher that will see it anyway (seconds)
HALT_GRACE = 0.0005

__all__ = ["setup_waker", "wake_parent", "breaker_fds", "reap_children",
           "children_alive", "end_children", "stop_children", "CHILDREN"]


def breaker_fds(breaker):
    """The fds the breaker needs in the Waker (a set): the Host's Breaker
    holds one socket (fileno())."""
    return {breaker.fileno()}


def _prune_bad_fds(watched):
    """select() said EBADF: drop watched fds this process hasn't got (an
    fd the Launcher opened after forking us can never be ours)."""
    for fd in list(watched):
        try:
            os.fstat(fd)
        except OSError:
            watched.discard(fd)


def wake_parent(pipefd, breaker, watched):
    """The Waker's main loop; mirrors wake_parent() in lguest.c.

    pipefd: the read end of the control pipe from the Launcher; breaker:
    the Host's BREAK channel (breaker.write((LHREQ_BREAK, 1)) blocks until
    the Launcher clears it; False if the Launcher is gone); watched: the set
    of fds to watch.  Never returns: exits 0 on EOF of pipefd, or when the
    Launcher is gone."""
    pending = b""
    while True:
        fds = [pipefd] + sorted(watched)
        try:
            ready, _, _ = select.select(fds, [], [])
        except InterruptedError:
            continue
        except OSError as e:
            if e.errno != errno.EBADF:
                raise
            _prune_bad_fds(watched)
            continue

        # Orders from the Launcher come first: it may be telling us to
        # stop watching the very fd that is readable.
        if pipefd in ready:
            try:
                data = os.read(pipefd, 4096)
            except InterruptedError:
                continue
            if not data:
                os._exit(0)
            pending += data
            whole = len(pending) - len(pending) % _INT.size
            for (fd,) in _INT.iter_unpack(pending[:whole]):
                if fd >= 0:
                    watched.add(fd)
                else:
                    watched.discard(-fd - 1)
            pending = pending[whole:]
            continue

        # We may have been slow to run: if the Launcher has already served
        # what woke us (it looks at input whenever it is out of the Guest),
        # a BREAK would only stop the Guest for nothing.
        try:
            still, _, _ = select.select(ready, [], [], 0)
        except (InterruptedError, OSError, ValueError):
            still = True
        if not still:
            STATS.bump("breaks_skipped")
            continue
        # The Guest may be asleep in HALT with the Host waiting for this very
        # input, or the Launcher out of the Guest and about to look at its
        # input itself (LguestDev.wake_on_input): it is on its way to the
        # Launcher already, and a BREAK would only cost a stop to clear.  Look
        # again in a moment (sooner if the Launcher writes to us): served, or
        # still there with the Guest running again, and then we BREAK as ever.
        waiting = getattr(breaker, "host_waiting", None)
        if waiting is not None and waiting():
            STATS.bump("breaks_deferred")
            try:
                select.select([pipefd], [], [], HALT_GRACE)
            except (InterruptedError, OSError, ValueError):
                pass
            continue
        STATS.bump("breaks")
        if lgtrace.on: lgtrace.waker_break(set(ready) - {pipefd})
        try:
            still_there = breaker.write((LHREQ_BREAK, 1))
        except OSError:
            still_there = False
        if lgtrace.on: lgtrace.waker_released(still_there)
        if still_there is False:
            os._exit(0)


def setup_waker(lg, devices):
    """Fork the Waker and return the fd of the pipe that steers it (also
    stored in devices.waker_fd); mirrors setup_waker() in lguest.c.

    Call after LHREQ_INITIALIZE and after every device is set up (the Waker
    can only watch fds that exist when it is forked).  The Waker watches
    devices.infds and holds no other fd of ours; the Launcher closes its own
    copy of the breaker here."""
    try:
        breaker = lg.breaker()
    except OSError:
        err("Creating the BREAK channel for the Waker")
    try:
        rfd, wfd = os.pipe()
    except OSError:
        err("Creating pipe for the Waker")
    watched = set(devices.infds)
    keep = {rfd} | watched | breaker_fds(breaker)
    try:
        fork_child("waker", lambda: wake_parent(rfd, breaker, watched), keep)
    except OSError:
        err("forking")
    os.close(rfd)
    breaker.close()
    devices.waker_fd = wfd
    return wfd
