"""The Host's helper thread: BREAK from the Waker and the Guest's clock event.

In Linux, the Waker's LHREQ_BREAK write woke the Launcher's task out of the Guest
(break_guest_out() in lguest_user.c) and the clock event was an hrtimer whose callback
called set_interrupt(cpu, 0).  Here the Guest runs inside unicorn's emu_start() on the
Launcher's main thread, so something else has to notice those events and stop the
emulation: one helper thread, which sleeps in select() on

  * our end of a socketpair whose other end the Waker process holds (a byte from the
    Waker = BREAK; end-of-file = the Waker died),
  * a pipe the main thread pokes when the clock deadline moves earlier,
  * the clock deadline itself (the select() timeout), and the "recheck" tick that
    stands in for the host timer interrupts which used to get the real Host out of
    a spinning Guest to deliver a still-pending interrupt.

The thread never calls emu_stop() itself: from another thread unicorn stops in the
middle of a translation block and then runs part of it again (see StopRequest in
ucinternals.py).  It bumps kick_gen and raises the StopRequest flag; a native block
hook stops the engine at the next block boundary.  The run loop lowers the flag *before*
its last look at kick_gen and stays out of emu_start() while an event is unseen, so no
event is lost: one raised after that look finds the flag up and stops the engine at the
first block it runs.
"""

import os
import select
import socket
import sys
import threading
import time

from .abi import LHREQ_BREAK
from .ucinternals import StopRequest

# The thread needs the GIL quickly when the main thread is busy in Python hooks.
SWITCH_INTERVAL = 0.0002
RECHECK = 0.001           # a pending interrupt is looked at again within this (a "tick")


class Breaker:
    """The Waker's end of the BREAK channel (what the Waker wrote /dev/lguest with).

    write((LHREQ_BREAK, 1)) stops the Guest and blocks until the Launcher clears the
    BREAK; returns True then, False if the Launcher has gone away.
    """

    def __init__(self, sock):
        self._sock = sock

    def fileno(self):
        return self._sock.fileno()

    def write(self, req):
        if len(req) != 2 or req[0] != LHREQ_BREAK or req[1] != 1:
            raise ValueError("the Waker can only write (LHREQ_BREAK, 1)")
        try:
            self._sock.sendall(b"B")
            return self._sock.recv(1) == b"R"
        except OSError:
            return False

    def close(self):
        self._sock.close()


class Channel:
    """Events for the run loop from the helper thread.  Created at LHREQ_INITIALIZE;
    the thread starts on the first read() (start()).  All flags are plain attributes:
    the thread only sets them, the main loop consumes them under .lock."""

    def __init__(self, uc):
        self.uc = uc
        self.stop_request = StopRequest(uc)
        self.lock = threading.Lock()
        self.kick_gen = 0          # written by the thread (and set_interrupt...), under .lock
        self.kick_seen = 0         # written by the main loop only
        self.break_flag = False
        self.waker_gone = False
        self.timer_fired = False
        self.deadline = None       # time.monotonic() of the clock event, or None
        # From other threads (the 3.16 /dev/lguest protocol, host/lguest_socket.py):
        self.irqs = 0              # LHREQ_IRQ bits not yet folded into irqs_pending
        self.dirty = []            # (gpa, length) written behind the CPU's back
        self.recheck = None        # time.monotonic() to stop the Guest and look again
        self._thread_deadline = None
        self.breaks_received = 0   # thread
        self.breaks_released = 0   # main
        self.wake = threading.Event()
        self.host_sock = None
        self.waker_sock = None
        self._ctl_r = self._ctl_w = None
        self._thread = None
        self._closing = False

    # --- set-up ----------------------------------------------------------------------
    def make_breaker(self):
        """The Waker's handle.  Forked children other than the Waker's own copy of it
        drop our end, so the Waker sees EOF when the Launcher dies."""
        if self.host_sock is None:
            self.host_sock, self.waker_sock = socket.socketpair()
            os.register_at_fork(after_in_child=self._after_fork_in_child)
            if self._ctl_w is not None:
                self._poke()          # the thread is already up: make it watch the socket
        return Breaker(self.waker_sock)

    def _after_fork_in_child(self):
        # A child must not keep the Host's end open: the Waker would never see EOF.
        sock = self.host_sock
        if sock is not None and not self._closing:
            try:
                sock.close()
            except OSError:
                pass
            self._closing = True
            self._thread = None

    def start(self):
        if self._thread is not None or self._closing:
            return
        sys.setswitchinterval(SWITCH_INTERVAL)
        self._ctl_r, self._ctl_w = os.pipe()
        os.set_blocking(self._ctl_w, False)
        self._thread = threading.Thread(target=self._run, name="lguest-host", daemon=True)
        self._thread.start()

    def close(self):
        self._closing = True
        if self._ctl_w is not None:
            self._poke()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(1.0)
        for fd in (self._ctl_r, self._ctl_w):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._ctl_r = self._ctl_w = None
        for s in (self.host_sock, self.waker_sock):
            if s is not None:
                s.close()

    def _poke(self):
        try:
            os.write(self._ctl_w, b"x")
        except (BlockingIOError, OSError):
            pass

    # --- the main loop's side --------------------------------------------------------
    def set_clockevent(self, delta_ns):
        with self.lock:
            if delta_ns == 0:
                self.deadline = None
                return
            self.deadline = dl = time.monotonic() + delta_ns / 1e9
            td = self._thread_deadline
        if self._ctl_w is not None and (td is None or dl < td):
            self._poke()

    def request_recheck(self, delay=RECHECK):
        """Stop the Guest in `delay` seconds so the run loop looks at interrupts again.

        The real Host got out of the Guest at every host timer tick and so delivered a
        still-pending interrupt within milliseconds, even to a Guest that spins with no
        hypercall.  Nothing else would stop our emulation: this tick stands in for it.
        """
        with self.lock:
            if self.recheck is not None:
                return
            self.recheck = t = time.monotonic() + delay
            td = self._thread_deadline
        if self._ctl_w is not None and (td is None or t < td):
            self._poke()

    # --- other threads' side (the 3.16 protocol: the Launcher's device threads) -----
    def set_interrupt(self, irq):
        """LHREQ_IRQ from a thread other than the run loop's: mirrors set_interrupt()
        in interrupts_and_traps.c -- the bit, then a kick out of the Guest (or out of
        HALT).  The run loop folds the bit into irqs_pending (collect_events)."""
        with self.lock:
            self.irqs |= 1 << irq
            self._kick_locked()

    def foreign_write(self, gpa, length):
        """Another process wrote Guest-physical [gpa, gpa+length) (a block read by
        the C Launcher's thread): the run loop drops unicorn's translations there
        before it delivers any interrupt that follows."""
        with self.lock:
            self.dirty.append((gpa, length))
            self._kick_locked()

    def signal_pending(self):
        """The task reading /dev/lguest has gone: like a fatal signal, which made
        run_guest() return -ERESTARTSYS, this makes the run loop return EAGAIN."""
        with self.lock:
            self.break_flag = True
            self._kick_locked()

    def _kick_locked(self):
        self.kick_gen += 1
        self.stop_request.set()
        self.wake.set()

    def release_waker(self):
        """LHREQ_BREAK, 0: let every blocked BREAK writer go."""
        n = self.breaks_received - self.breaks_released
        if n > 0 and self.host_sock is not None:
            self.breaks_released += n
            try:
                self.host_sock.sendall(b"R" * n)
            except OSError:
                pass

    # --- the thread ------------------------------------------------------------------
    def _run(self):
        while not self._closing:
            # breaker() may come after the first read(): look for the socket each time.
            fds = [self._ctl_r]
            if self.host_sock is not None and not self.waker_gone:
                fds.append(self.host_sock)
            with self.lock:
                dl = self.deadline
                if self.recheck is not None and (dl is None or self.recheck < dl):
                    dl = self.recheck
                self._thread_deadline = dl
            timeout = None if dl is None else max(0.0, dl - time.monotonic())
            try:
                r, _, _ = select.select(fds, [], [], timeout)
            except (OSError, ValueError):
                return
            if self._closing:
                return
            new = False
            if self._ctl_r in r:
                try:
                    os.read(self._ctl_r, 4096)
                except OSError:
                    pass
            if self.host_sock is not None and self.host_sock in r:
                try:
                    data = self.host_sock.recv(64)
                except OSError:
                    data = b""
                if data:
                    self.breaks_received += len(data)
                    self.break_flag = True
                else:
                    self.waker_gone = True
                new = True
            with self.lock:
                now = time.monotonic()
                if self.deadline is not None and now >= self.deadline:
                    self.deadline = None
                    self.timer_fired = True
                    new = True
                if self.recheck is not None and now >= self.recheck:
                    self.recheck = None
                    new = True
                if new:
                    # Order matters: the event first, then the flag (see the
                    # docstring).  Under the lock: other threads kick too.
                    self._kick_locked()
