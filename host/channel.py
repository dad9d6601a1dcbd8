"""The Host's helper thread and the events it raises for the run loop.

In Linux, the Waker's LHREQ_BREAK write woke the Launcher's task out of the Guest
(break_guest_out() in 2.6.24's lguest_user.c) and the clock event was an hrtimer whose
callback called set_interrupt(cpu, 0).  Here the Guest runs inside unicorn's emu_start()
on the Launcher's main thread, so something else has to notice those events and stop
the emulation: one helper thread, which sleeps in select() on

  * our end of a socketpair whose other end the Waker process holds (a byte from the
    Waker = BREAK; end-of-file = the Waker died),
  * a pipe the main thread pokes when the clock deadline moves earlier,
  * the clock deadline itself (the select() timeout), and the "recheck" tick that
    stands in for the host timer interrupts which used to get the real Host out of
    a spinning Guest to deliver a still-pending interrupt.

What it sees goes into one Events object, which the run loop takes all at once.
"""

import mmap
import os
import select
import socket
import sys
import threading
import time

import lgtrace

from .abi import LHREQ_BREAK
from .ucinternals import StopRequest

# The thread needs the GIL quickly when the main thread is busy in Python hooks.
SWITCH_INTERVAL = 0.0002
RECHECK = 0.001           # a pending interrupt is looked at again within this (a "tick")
RECHECK_FIRST = 0.0002    # ... and first this soon (Guest.recheck_interrupts)

# The events, as bits of Events.bits.
TIMER = 1                 # the clock event expired: IRQ 0
BREAK = 2                 # the Waker wrote LHREQ_BREAK 1
WAKER_GONE = 4            # the Waker's end of the BREAK channel closed
RECHECK_TICK = 8          # look at still-pending interrupts again
# From threads other than the helper (the 3.16 protocol, host/lguest_socket.py):
IRQS = 16                 # LHREQ_IRQ: Events.irqs says which
FOREIGN_WRITE = 32        # Guest memory written behind the CPU's back: Events.dirty says where
INPUT = 64                # a halted sleep saw one of the Launcher's input fds readable

# Channel.state[0], for the Waker (Breaker.host_waiting)
IN_GUEST = 0              # in read(): the Guest runs, or the Host is busy with it
HALT_WATCHING = 1         # in read(): halted, watching the Launcher's input fds
LAUNCHER = 2              # out of read(): the Launcher looks at its input itself


class Events:
    """What happened outside the Guest that the run loop must look at: one word of bits
    (TIMER, BREAK, WAKER_GONE, RECHECK_TICK; IRQS and FOREIGN_WRITE), raised by the
    helper thread (and by the threads serving the 3.16 protocol), taken all at once by
    the run loop.

      raise_(bits)   the thread: add events, then stop the engine and wake a halt
      pending()      the loop: anything to take?  (cheap: asked on every hypercall)
      take() -> bits the loop: every raised event, cleared; WAKER_GONE stays raised,
                     because the Waker stays gone
      raise_irq(irq), raise_foreign_write(gpa, length)   any thread: with their payload,
                     which take_irqs() / take_dirty() hand over

    The clock event is an event whose time is known: `deadline` (time.monotonic(), or
    None).  Either side turns an expired deadline into TIMER, so the loop does not wait
    for the thread to get the GIL to see its tick.

    No event is lost and none waits for the Guest's next exit, because of two orders:
      * raise_() stores the bits *before* it raises the stop request;
      * the run loop lowers the stop request (stop.clear()) *before* its last pending()
        and stays out of the engine while anything is pending.
    An event raised after that last look finds the request up, and the engine stops at
    its next block boundary (if that uc_emu_stop() came just before the engine started
    and was lost, the helper thread makes another within RECHECK while the event waits).
    (A request raised for an event the loop has already taken stops the engine with
    nothing new to see: a harmless re-entry.)

    stop is the engine's stop request: set() / clear() / is_set(), taken only at a
    translation-block boundary (ucinternals.StopRequest).  A halted Guest's sleep is a
    select() on the read end of a pipe (wake_fd, made by Channel.start()): a raise
    writes a byte to it while `sleeping` is set.  The loop sets `sleeping` before its
    last pending(), the raise stores its bits before it looks at `sleeping` (both under
    the GIL, which orders them), so a raise is either seen by that pending() or wakes
    the select().
    """

    def __init__(self, stop):
        self.stop = stop
        self.kick = None              # wakes the helper thread (Channel sets it)
        self.sleeping = False
        self.wake_fd = self._wake_w = None
        self.lock = threading.Lock()
        self.bits = 0
        self.deadline = None
        self.irqs = 0                 # IRQS: the interrupts other threads asked for
        self.dirty = []               # FOREIGN_WRITE: (gpa, length) to retranslate

    def raise_(self, bits):
        """Raise bits, and TIMER if the clock event has expired (helper thread)."""
        with self.lock:
            bits |= self._expired(time.monotonic())
            if not bits:
                return
            self.bits |= bits
        self.stop.set()               # after the bits: see the class docstring
        if self.sleeping:
            self.wake_up()
        if self.kick is not None:
            self.kick()               # the helper thread minds a stop that got lost
        if lgtrace.on: lgtrace.raised(bits)

    def add(self, bits):
        """Raise bits from the run loop's own thread (what a halted sleep saw itself):
        no stop request, no wake-up, the loop takes them next."""
        with self.lock:
            self.bits |= bits

    def wake_up(self):
        w = self._wake_w
        if w is not None:
            try:
                os.write(w, b"w")
            except OSError:           # full: the sleeper has wake-ups enough
                pass

    def raise_irq(self, irq):
        """LHREQ_IRQ from another thread: mirrors set_interrupt() (the bit, then a kick
        out of the Guest or out of HALT)."""
        with self.lock:
            self.irqs |= 1 << irq
        self.raise_(IRQS)

    def raise_foreign_write(self, gpa, length):
        """Another process wrote Guest-physical [gpa, gpa+length) (the C Launcher's
        block thread): the loop drops unicorn's translations there before it delivers
        any interrupt that follows."""
        with self.lock:
            self.dirty.append((gpa, length))
        self.raise_(FOREIGN_WRITE)

    def take_irqs(self):
        with self.lock:
            irqs, self.irqs = self.irqs, 0
        return irqs

    def take_dirty(self):
        with self.lock:
            dirty, self.dirty = self.dirty, []
        return dirty

    def pending(self):
        """True if take() has something (the run loop, and its hook on every exit)."""
        dl = self.deadline
        return self.bits != 0 or (dl is not None and time.monotonic() >= dl)

    def take(self):
        """Every raised event as bits, and clear them (WAKER_GONE stays)."""
        if not self.pending():
            return 0
        with self.lock:
            bits = self.bits | self._expired(time.monotonic())
            self.bits = bits & WAKER_GONE
        return bits

    def set_clock(self, deadline):
        """Replace the clock event's deadline (None cancels it); returns True if the one
        it replaces had expired.  The hrtimer would have raised IRQ 0 the moment it
        expired, so re-arming or cancelling afterwards never took that interrupt back."""
        with self.lock:
            fired = self._expired(time.monotonic())
            self.deadline = deadline
        return fired != 0

    def _expired(self, now):
        """TIMER (and the deadline gone) if the clock event has expired; lock held."""
        dl = self.deadline
        if dl is not None and now >= dl:
            self.deadline = None
            return TIMER
        return 0


class Breaker:
    """The Waker's end of the BREAK channel (what the Waker wrote /dev/lguest with).

    write((LHREQ_BREAK, 1)) stops the Guest and blocks until the Launcher clears the
    BREAK; returns True then, False if the Launcher has gone away.
    """

    def __init__(self, sock, state=None):
        self._sock = sock
        self._state = state

    def fileno(self):
        return self._sock.fileno()

    def host_waiting(self):
        """True while readable input reaches the Launcher without a BREAK: the Guest
        sleeps in HALT and the Host waits for the Launcher's input fds itself, or
        read() has returned and the Launcher looks at its input before it reads again
        (LguestDev.wake_on_input).  (A byte in memory shared with the Host.)"""
        return self._state is not None and self._state[0] != IN_GUEST

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
    """The helper thread and the BREAK channel.  Created at LHREQ_INITIALIZE with the
    engine it stops; the thread starts on the first read() (start()).  What it sees
    goes into .events."""

    def __init__(self, uc):
        self.events = Events(StopRequest(uc))
        self.recheck = None        # time.monotonic() to stop the Guest and look again
        self._thread_deadline = None   # when the sleeping thread looks next
        self.breaks_received = 0   # under events.lock: the thread, or a halted run loop
        self.breaks_released = 0   # main
        self.waker_gone = False
        # One byte the Waker can read (IN_GUEST, HALT_WATCHING or LAUNCHER): see
        # Breaker.host_waiting.  Shared anonymous memory, made now so the Waker,
        # forked after LHREQ_INITIALIZE, shares it.
        self.state = mmap.mmap(-1, 1)
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
        return Breaker(self.waker_sock, self.state)

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
        self.events.kick = self._kick
        ev = self.events
        ev.wake_fd, ev._wake_w = os.pipe()
        os.set_blocking(ev.wake_fd, False)
        os.set_blocking(ev._wake_w, False)
        self._thread = threading.Thread(target=self._run, name="lguest-host", daemon=True)
        self._thread.start()

    def close(self):
        self._closing = True
        if self._ctl_w is not None:
            self._poke()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(1.0)
        ev = self.events
        for fd in (self._ctl_r, self._ctl_w, ev.wake_fd, ev._wake_w):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._ctl_r = self._ctl_w = None
        ev.wake_fd = ev._wake_w = None
        for s in (self.host_sock, self.waker_sock):
            if s is not None:
                s.close()

    def _kick(self):
        """Another thread raised an event: wake the helper thread to mind the stop."""
        if threading.current_thread() is not self._thread and self._ctl_w is not None:
            self._poke()

    def _poke(self):
        try:
            os.write(self._ctl_w, b"x")
        except (BlockingIOError, OSError):
            pass

    # --- the main loop's side --------------------------------------------------------
    def set_clockevent(self, delta_ns):
        """The clock event: TIMER in delta_ns (0 cancels).  Returns True if the deadline
        it replaces had already expired (see Events.set_clock)."""
        dl = None if delta_ns == 0 else time.monotonic() + delta_ns / 1e9
        fired = self.events.set_clock(dl)
        # Read after the store: the thread reads the deadline and records when it
        # looks next in one locked step, so this is never older than both.
        td = self._thread_deadline
        if dl is not None and self._ctl_w is not None and (td is None or dl < td):
            self._poke()
        return fired

    def request_recheck(self, delay=RECHECK):
        """Stop the Guest in `delay` seconds so the run loop looks at interrupts again.

        The real Host got out of the Guest at every host timer tick and so delivered a
        still-pending interrupt within milliseconds, even to a Guest that spins with no
        hypercall.  Nothing else would stop our emulation: this tick stands in for it.
        """
        with self.events.lock:        # the lock the thread reads its timers under
            if self.recheck is not None:
                return
            self.recheck = t = time.monotonic() + delay
            td = self._thread_deadline
        if self._ctl_w is not None and (td is None or t < td):
            self._poke()

    # --- other threads' side (the 3.16 protocol: the Launcher's device threads) -----
    def set_interrupt(self, irq):
        """LHREQ_IRQ from a thread other than the run loop's (Events.raise_irq)."""
        self.events.raise_irq(irq)

    def foreign_write(self, gpa, length):
        """Guest memory another process wrote (Events.raise_foreign_write)."""
        self.events.raise_foreign_write(gpa, length)

    def signal_pending(self):
        """The task reading /dev/lguest has gone: like a fatal signal, which made
        run_guest() return -ERESTARTSYS, a BREAK makes the run loop return EAGAIN."""
        self.events.raise_(BREAK)

    def wait_halted(self, timeout, input_fds=()):
        """A halted Guest's sleep (core.Guest.sleep): block until a raise wakes us, the
        Waker's BREAK arrives, one of input_fds (the Launcher's, see
        LguestDev.wake_on_input) is readable, or timeout seconds (None: no limit) pass.

        The BREAK channel is watched here too, not only by the helper thread: the Waker's
        byte then wakes this thread at once instead of waking the helper, which would
        wake us (two scheduler hops where the real Host's BREAK write woke the sleeping
        Launcher directly).  Whoever of us reads the byte first raises BREAK; the other
        finds the socket empty."""
        ev = self.events
        fds = [ev.wake_fd]
        sock = self.host_sock
        if sock is not None and not self.waker_gone:
            fds.append(sock)
        fds.extend(input_fds)
        if input_fds:
            self.state[0] = HALT_WATCHING
        try:
            r, _, _ = select.select(fds, [], [], timeout)
        except InterruptedError:
            r = []
        except (OSError, ValueError):
            r = []
            if timeout:
                time.sleep(min(timeout, RECHECK))
        finally:
            self.state[0] = IN_GUEST
        if ev.wake_fd in r:
            try:
                os.read(ev.wake_fd, 4096)
            except OSError:
                pass
        if sock is not None and sock in r:
            ev.add(self._take_breaks(sock))
        if len(r) > (ev.wake_fd in r) + (sock in r):
            ev.add(INPUT)

    def _take_breaks(self, sock):
        """Read the Waker's BREAK bytes, if any are still there: BREAK, WAKER_GONE at
        end of file, or 0 (someone else read them)."""
        try:
            data = sock.recv(64, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return 0
        except OSError:
            data = b""
        if not data:
            self.waker_gone = True
            return WAKER_GONE
        with self.events.lock:
            self.breaks_received += len(data)
        return BREAK

    def release_waker(self):
        """LHREQ_BREAK, 0: let every blocked BREAK writer go.

        In Linux the Waker's write set break_out at once, so the Launcher's BREAK 0
        cleared every BREAK written before it.  Here a BREAK travels as a byte the
        helper thread may not have read yet: take those bytes now and forget the
        event, so a BREAK for input the Launcher has already served (it looks at input
        whenever it is out of the Guest) costs the Guest no stop.  The Waker, released,
        looks again and BREAKs anew for anything still unread."""
        ev = self.events
        sock = self.host_sock
        if sock is not None and not self.waker_gone:
            if self._take_breaks(sock) == WAKER_GONE:
                ev.add(WAKER_GONE)
        with ev.lock:
            ev.bits &= ~BREAK
            n = self.breaks_received - self.breaks_released
        if n > 0 and self.host_sock is not None:
            self.breaks_released += n
            try:
                self.host_sock.sendall(b"R" * n)
            except OSError:
                pass

    # --- the thread ------------------------------------------------------------------
    def _run(self):
        ev = self.events
        while not self._closing:
            # breaker() may come after the first read(): look for the socket each time.
            fds = [self._ctl_r]
            if self.host_sock is not None and not self.waker_gone:
                fds.append(self.host_sock)
            with ev.lock:
                dl = ev.deadline
                if self.recheck is not None and (dl is None or self.recheck < dl):
                    dl = self.recheck
                self._thread_deadline = dl
            timeout = None if dl is None else max(0.0, dl - time.monotonic())
            if ev.bits & ~WAKER_GONE:
                # Raised and not taken yet: the stop may have come while the engine was
                # between runs, and been lost (see StopRequest): ask again in a tick.
                timeout = RECHECK if timeout is None else min(timeout, RECHECK)
            try:
                r, _, _ = select.select(fds, [], [], timeout)
            except (OSError, ValueError):
                return
            if self._closing:
                return
            if not r and ev.bits & ~WAKER_GONE:
                ev.stop.set()
            bits = 0
            if self._ctl_r in r:
                try:
                    os.read(self._ctl_r, 4096)
                except OSError:
                    pass
            if self.host_sock is not None and self.host_sock in r:
                bits |= self._take_breaks(self.host_sock)
            with ev.lock:
                if self.recheck is not None and time.monotonic() >= self.recheck:
                    self.recheck = None
                    bits |= RECHECK_TICK
            ev.raise_(bits)           # adds TIMER if the clock event expired
