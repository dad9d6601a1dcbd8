"""/dev/lguest, both ways it was spoken (mirrors drivers/lguest/lguest_user.c).

Two Launchers, two protocols over one Host:

  LguestDev   our Launcher's (launcher.py), the 2.6.24 shape: one Launcher thread runs
              the Guest with read() and hears every NOTIFY; a forked Waker stops it with
              LHREQ_BREAK (2.6.24's protocol, gone in 3.16), and the Launcher clears
              the BREAK.  INITIALIZE takes 3.16's (base, pfnlimit, start).  Tuples in,
              Python values out; -EINVAL is ValueError.

  LguestFile  Linux 3.16's, what tools/lguest/lguest.c (3.16) spoke: bytes in, bytes
              out and -errno, word by word as the kernel's read()/write() saw them.
              Device threads of the Launcher attach an eventfd to each virtqueue
              (LHREQ_EVENTFD): a NOTIFY of that address signals it instead of returning
              to read().  They send LHREQ_IRQ themselves, from other threads, while the
              Launcher's main thread sits in read() (pread with the cpu id as the file
              offset).  After death read() returns -ENOENT, then the reason.  Served to
              the C Launcher over a socket by host/lguest_socket.py.
"""

import errno
import os

import lgtrace

from .abi import (LGUEST_IRQS, LHREQ_BREAK, LHREQ_EVENTFD, LHREQ_INITIALIZE, LHREQ_IRQ,
                  PAGE_SIZE)
from .channel import IN_GUEST, LAUNCHER
from .core import Guest, GuestDied
from .cpu import HOST_PHYS


class LguestDev:
    """One open of /dev/lguest as our Launcher speaks it (see the module docstring):
    at most one Guest.

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
            if lgtrace.on: lgtrace.lhreq_irq(req[1])
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
                if lgtrace.on: lgtrace.lhreq_break()
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
        ch = g.channel
        ch.start()
        ch.state[0] = IN_GUEST
        try:
            if lgtrace.on:
                return lgtrace.read(g)      # in a span on the trace
            return g.run_guest()
        finally:
            if g.input_fds:
                ch.state[0] = LAUNCHER     # it looks at its input before reading again

    def wake_on_input(self, fds):
        """API extension, not in lguest: while the Guest is halted, read() also returns
        EAGAIN (as after a BREAK) when one of fds is readable.  fds is the Launcher's
        own live set of input fds (DeviceList.infds), looked at on every halt.

        The Waker exists because the Launcher can't watch its fds from inside read().
        But while the Guest sleeps in HALT, the Host is only waiting, and can wait for
        the Launcher's input as well: a disk request finished or a frame arriving then
        wakes the Launcher in one step, not three (Waker, BREAK, Host).  The Waker
        still watches while the Guest runs, and sends no BREAK for input the Launcher
        has served (waker/).

        In return the Launcher promises to look at its input fds itself after every
        read() that returns, before it reads again (launcher.py does, after a NOTIFY
        as after a BREAK): while it is out of read() too, the Waker sends no BREAK
        (Breaker.host_waiting)."""
        if self.guest is None:
            raise ValueError("LHREQ_INITIALIZE first (EINVAL)")
        self.guest.input_fds = fds

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


class LguestFile:
    """One open of Linux 3.16's /dev/lguest (struct file, private_data = struct lguest):
    the file_operations of lguest_user.c on bytes.

        f = LguestFile(word=4, user_memory=...)   # word: sizeof(long) of the Launcher
        f.write(data, offset, caller, fd=None) -> int   bytes taken, or -errno
        f.read(size, offset, caller) -> bytes | int     runs the Guest; -errno on error
        f.signal_pending()      the reader has gone: read() returns -EINTR soon
        f.foreign_write(addr, length)   Launcher memory written behind the CPU's back
        f.close()               release(): the Guest and its eventfds go

    `caller` is the writing/reading task's pid (the kernel's `current`); `fd` is an
    open file the request carried (the eventfd of LHREQ_EVENTFD, which the transport
    received with it: fd numbers mean nothing across processes).  `user_memory(addr,
    length)` turns a range of the Launcher's address space into one of ours (or None):
    LHREQ_INITIALIZE's base is the Launcher's pointer, as it was the kernel's user
    pointer.  write() and foreign_write() may be called from any thread; read() and
    close() only from the one that runs the Guest, and INITIALIZE before any read().
    """

    NR_CPUS = 1                    # 3.16's Launcher only ever made cpu 0

    def __init__(self, word, user_memory):
        self.word = word
        self.user_memory = user_memory
        self.dev = LguestDev()
        self.base = None           # the Launcher's address of Guest memory
        self.owner = None          # cpu->tsk: the task that initialized
        self.eventfds = []         # fds we hold for the map (closed on release)

    # --- write(): mirrors write() in lguest_user.c (3.16) ---------------------------
    def write(self, data, offset, caller, fd=None):
        """The fd, if any, is ours from now on: kept (an attached eventfd) or closed."""
        try:
            return self._write(data, offset, caller, fd)
        finally:
            if fd is not None and fd not in self.eventfds:
                os.close(fd)

    def _write(self, data, offset, caller, fd):
        args = self._words(data)
        if not args:
            return -errno.EFAULT           # get_user(req) failed
        req, args = args[0], args[1:]
        g = self.dev.guest
        if req != LHREQ_INITIALIZE:
            if g is None or offset >= self.NR_CPUS:
                return -errno.EINVAL
            if g.dead is not None:
                return -errno.ENOENT        # once dead, you can only read() why
        if req == LHREQ_INITIALIZE:
            return self._initialize(args, caller)
        if req == LHREQ_IRQ:
            if not args:
                return -errno.EFAULT
            if args[0] >= LGUEST_IRQS:
                return -errno.EINVAL
            if lgtrace.on: lgtrace.lhreq_irq(args[0])
            g.channel.set_interrupt(args[0])
            return 0
        if req == LHREQ_EVENTFD:
            return self._attach_eventfd(args, fd)
        return -errno.EINVAL                # GETDMA, BREAK: gone by 3.16

    def _words(self, data):
        w = self.word
        return [int.from_bytes(data[i:i + w], "little")
                for i in range(0, len(data) - w + 1, w)]

    def _initialize(self, args, caller):
        """LHREQ_INITIALIZE: base, pfnlimit, start; mirrors initialize().  Returns
        sizeof(args), three words, as the C did."""
        if self.dev.guest is not None:
            return -errno.EBUSY
        if len(args) < 3:
            return -errno.EFAULT
        base, pfnlimit, start = args[:3]
        here = self.user_memory(base, pfnlimit * PAGE_SIZE)
        if here is None:
            return -errno.EFAULT            # not memory the Host can reach
        try:
            self.dev.write((LHREQ_INITIALIZE, here, pfnlimit, start))
        except ValueError:
            return -errno.EINVAL
        except Exception as e:              # this Host can't run at all (engine check)
            os.write(2, ("lguest: %s\n" % e).encode())
            return -errno.ENODEV
        self.base = base
        self.owner = caller
        return 3 * self.word

    def _attach_eventfd(self, args, fd):
        """LHREQ_EVENTFD: address, fd; mirrors attach_eventfd() / add_eventfd().

        The map is replaced, never changed in place (the C's RCU copy): the run loop
        may be walking the old one on another thread right now."""
        if len(args) < 2:
            return -errno.EFAULT
        addr = args[0]
        if not addr:
            return -errno.EINVAL
        if fd is None:
            return -errno.EBADF
        try:
            is_eventfd = os.readlink("/proc/self/fd/%d" % fd) == "anon_inode:[eventfd]"
        except OSError:
            is_eventfd = False
        if not is_eventfd:
            return -errno.EINVAL            # eventfd_ctx_fdget(): not an eventfd
        self.eventfds.append(fd)
        g = self.dev.guest
        g.eventfds = g.eventfds + ((addr, fd),)
        return 0

    # --- read(): mirrors read() in lguest_user.c (3.16) -----------------------------
    def read(self, size, offset, caller):
        g = self.dev.guest
        if g is None or offset >= self.NR_CPUS:
            return -errno.EINVAL
        if caller != self.owner:
            return -errno.EPERM             # not the task which owns the Guest
        if g.dead is None:
            try:
                addr = self.dev.read()
            except GuestDied as e:
                return -errno.ERESTART if e.restart else -errno.ENOENT
            except BlockingIOError:
                g.break_out = False
                return -errno.EINTR         # -ERESTARTSYS: the reader is gone
            # put_user() of the whole unsigned long.
            return (addr & ((1 << 8 * self.word) - 1)).to_bytes(self.word, "little")
        # Dead: the reason, NUL included, as much as fits; -ERESTART for a reboot.
        if g.restart:
            return -errno.ERESTART
        reason = g.dead.encode("utf-8", "replace") + b"\0"
        return reason[:size]

    # --- from other threads -----------------------------------------------------------
    def signal_pending(self):
        if self.dev.guest is not None:
            self.dev.guest.channel.signal_pending()

    def foreign_write(self, addr, length):
        """[addr, addr+length) of the Launcher's memory was written by another task:
        if it is Guest memory, unicorn must forget code translated from it."""
        g = self.dev.guest
        if g is None or self.base is None or length <= 0:
            return
        gpa = addr - self.base
        if 0 <= gpa < g.mem_limit:
            g.channel.foreign_write(gpa, min(length, g.mem_limit - gpa))

    # --- release(): mirrors close() in lguest_user.c --------------------------------
    def close(self):
        self.dev.close()
        for fd in self.eventfds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.eventfds = []
