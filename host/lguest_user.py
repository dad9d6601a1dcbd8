"""/dev/lguest as a Python object (mirrors drivers/lguest/lguest_user.c).

The Launcher talks to the Host through write() and read() exactly as it talked to the
character device: write((LHREQ_INITIALIZE, base, pfnlimit, start)) once, then read() to
run the Guest, write((LHREQ_IRQ, n)) to raise interrupts, and the LHREQ_BREAK pair to
stop and release.  Errors the C returned as -EINVAL are ValueError here.
"""

import os

from .abi import LGUEST_IRQS, LHREQ_BREAK, LHREQ_INITIALIZE, LHREQ_IRQ, PAGE_SIZE
from .core import Guest, GuestDied
from .cpu import HOST_PHYS


class LguestDev:
    """One open of /dev/lguest: at most one Guest.

    No engine and no thread exist before LHREQ_INITIALIZE; the Host's helper thread
    starts on the first read(), so processes forked before that (the block I/O worker)
    inherit nothing of it.
    """

    def __init__(self):
        self.guest = None
        self._pid = os.getpid()

    # --- write(): mirrors write() in lguest_user.c ------------------------------------
    def write(self, req):
        """req: a tuple (LHREQ_*, args...).  Raises ValueError for a bad request."""
        if not req:
            raise ValueError("empty request")
        op = req[0]
        if op == LHREQ_INITIALIZE:
            return self._initialize(req)
        g = self.guest
        if g is None:
            raise ValueError("LHREQ_INITIALIZE first (EINVAL)")
        if op == LHREQ_IRQ:
            if len(req) != 2 or not 0 <= req[1] < LGUEST_IRQS:
                raise ValueError("bad interrupt (EINVAL)")
            g.irqs_pending |= 1 << req[1]
            return
        if op == LHREQ_BREAK:
            if len(req) != 2:
                raise ValueError("bad break request (EINVAL)")
            if req[1]:
                # The Waker's half lives in breaker(); from the Launcher itself a BREAK
                # just makes the next read() return EAGAIN.
                g.break_out = True
            else:
                g.break_out = False
                g.channel.release_waker()
            return
        raise ValueError("unknown request %r (EINVAL)" % (op,))

    def _initialize(self, req):
        """LHREQ_INITIALIZE (3.16): base, pfnlimit, start; mirrors initialize()."""
        if self.guest is not None:
            raise ValueError("already initialized (EBUSY)")
        if len(req) != 4:
            raise ValueError("LHREQ_INITIALIZE takes base, pfnlimit, start (EINVAL)")
        _, base, pfnlimit, start = req
        if base <= 0 or base % PAGE_SIZE or pfnlimit <= 0 or pfnlimit * PAGE_SIZE > HOST_PHYS:
            raise ValueError("bad memory for the Guest (EINVAL)")
        try:
            self.guest = Guest(base, pfnlimit, start & 0xFFFFFFFF)
        except Exception as e:
            from .ucinternals import UnicornMismatch
            if isinstance(e, UnicornMismatch):
                _die(str(e))
            raise

    # --- read(): mirrors read() in lguest_user.c --------------------------------------
    def read(self):
        """Run the Guest.  Returns the NOTIFY address (int); raises
        BlockingIOError(EAGAIN) after a BREAK, GuestDied, or WakerDied."""
        g = self.guest
        if g is None:
            raise ValueError("LHREQ_INITIALIZE first (EINVAL)")
        if g.dead is not None:
            raise GuestDied(g.dead, g.poweroff, g.restart)
        # If we returned last time because the Guest sent I/O, that is done now.
        g.pending_notify = 0
        g.channel.start()
        return g.run_guest()

    def breaker(self):
        """The Waker's handle for LHREQ_BREAK (call after INITIALIZE, before the fork)."""
        if self.guest is None:
            raise ValueError("LHREQ_INITIALIZE first (EINVAL)")
        return self.guest.channel.make_breaker()

    def drop_translations(self, gpa, length):
        """Another process wrote Guest memory [gpa, gpa+length): forget any code unicorn
        translated from it.  Cheap; safe when the range is not mapped."""
        if self.guest is not None:
            self.guest.drop_translations(gpa, length)

    def close(self):
        """Stop the helper thread and let the engine go (API extension: tests make many)."""
        if self.guest is not None:
            self.guest.channel.close()
            self.guest = None


def _die(msg):
    """The one-line death the Launcher prints, if the Launcher's error type exists."""
    try:
        from devices.errors import LauncherError
    except ImportError:
        raise RuntimeError(msg) from None
    raise LauncherError(msg) from None
