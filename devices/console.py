"""The console: the Guest's hvc0, on our stdin and stdout.

A virtio console device (type 3) with two virtqueues, as setup_console() in
lguest.c built it: the Guest puts empty buffers in the first (receive) queue
and we read stdin straight into them; it puts text in the second (transmit)
queue and we write it to stdout.

UNIX tty handling makes it uglier than it could be: when stdin is a
terminal we switch off echo, line editing and signal keys, so every key
(^C included) goes to the Guest; and we must give the user their terminal
back however we leave.  Three ^C within about a second is the way out.
"""

import atexit
import os
import sys
import termios
import threading
import time

import lgtrace

from .abi import VIRTIO_ID_CONSOLE, VIRTQUEUE_NUM
from .errors import err, errx

#: The terminal modes stdin had before we made it raw: None if stdin is not
#: a terminal (or we already gave them back).  The C's orig_term.
_orig_term = None

#: How close together three ^C must come (seconds) to end the Launcher.
#: The C allowed "within about a second" (whole seconds of gettimeofday).
CTRL_C_WINDOW = 1.5
CTRL_C = 3


#: raw_term() and restore_term() may race: the Launcher's way out can start in
#: its signal thread while the main thread is still setting up.
_term_lock = threading.Lock()
#: Set by restore_term(for_good=True): we are leaving, never go raw again.
_term_done = False


def restore_term(for_good=False):
    """Give stdin back the terminal modes it had; mirrors restore_term() in
    lguest.c.  Safe to call any number of times, from any exit path and any
    thread; for_good (the Launcher's way out) also stops a raw_term() that
    comes later."""
    global _term_done
    with _term_lock:
        if for_good:
            _term_done = True
        if _orig_term is None:
            return
        try:
            termios.tcsetattr(0, termios.TCSANOW, _orig_term)
        except (termios.error, OSError):
            pass


class ConsoleAbort:
    """The ^C count for the "three ^C within a second" exit; mirrors struct
    console_abort in lguest.c.  count: ^Cs seen in a row; start: when
    (time.monotonic()) the first of them came."""

    def __init__(self):
        self.count = 0
        self.start = 0.0

    def saw(self, n_ctrl_c):
        """Note a read of n_ctrl_c ^C bytes and nothing else (0 for any
        other input, which resets the count).  Returns True when that makes
        three within CTRL_C_WINDOW seconds."""
        if not n_ctrl_c:
            self.count = 0
            return False
        now = time.monotonic()
        for _ in range(n_ctrl_c):
            if self.count == 0:
                self.start = now
            self.count += 1
            if self.count == 3:
                if now - self.start <= CTRL_C_WINDOW:
                    return True
                # Too slow: as the C, start counting afresh.
                self.count = 0
        return False


def handle_console_input(lg, dev):
    """stdin is readable: read it straight into the Guest's next receive
    buffer and interrupt the Guest.  Returns False to stop watching stdin:
    when the Guest has no buffer (enable_fd() resumes when it adds one), or
    for good when stdin is at end of file or broken ("Failed to get console
    input, ignoring console.").  Three ^C within about a second end the
    Launcher with status 2.  Mirrors handle_console_input() in lguest.c."""
    vq = dev.vq
    got = vq.get_vq_desc()
    if got is None:
        return False
    head, iov, out_num, in_num = got
    if out_num:
        errx("Output buffers in console in queue?")

    # A buffer with no room in it: readv() would return 0, which looks
    # just like end of file.  Give it back as it came and try the next.
    if not any(len(b) for b in iov):
        vq.add_used_and_trigger(lg, head, 0)
        return True

    # readv() into the memoryviews: the bytes land in the Guest's buffer
    # with no copy on our side, as the C's readv() of its iovec did.
    try:
        length = os.readv(dev.fd, iov)
    except BlockingIOError:
        # A spurious wake-up: nothing to read after all.  Put the buffer
        # back where we found it and keep watching.
        unget_vq_desc(vq)
        return True
    except OSError:
        length = -1
    if length <= 0:
        # Closed, /dev/null, or something went terribly wrong.  The C kept
        # the buffer; we hand it back empty, so a Guest can tell the end of
        # input from silence (ours powers its demo off; Linux's hvc just
        # reads nothing and carries on), and then never look again.
        _warn("Failed to get console input, ignoring console.")
        vq.add_used_and_trigger(lg, head, 0)
        restore_term()
        # No more enable_fd() when the Guest adds input buffers.
        vq.handle_output = None
        return False

    if lgtrace.on: lgtrace.transfer(vq, length)
    vq.add_used_and_trigger(lg, head, length)

    # Three ^C within about a second?  Exit.  The C counted only reads of
    # exactly one ^C; a slow Launcher may read several at once, so a read of
    # nothing but ^Cs counts as that many.
    data = _first_bytes(iov, length)
    n_ctrl_c = length if data == bytes([CTRL_C]) * length else 0
    if dev.priv.saw(n_ctrl_c):
        # The Launcher's exit path closes the Waker's pipe and ends it.
        raise SystemExit(2)
    return True


def unget_vq_desc(vq):
    """Put back the buffer the last get_vq_desc() took, unused, so the next
    get_vq_desc() returns it again (the Guest can't tell: we never touched
    the used ring)."""
    vq.last_avail_idx = (vq.last_avail_idx - 1) & 0xFFFF


def _first_bytes(iov, length):
    """The first length bytes spread over the memoryviews of iov (bytes);
    we only look at them when length is small."""
    if length > 8:
        return b""
    out = bytearray()
    for buf in iov:
        out += buf[:length - len(out)]
        if len(out) >= length:
            break
    return bytes(out)


def handle_console_output(lg, vq):
    """The Guest kicked the transmit queue: write every buffer in it to
    stdout and give them back.  Mirrors handle_console_output() in
    lguest.c; dies "Input buffers in output queue?" on a writable buffer."""
    while True:
        got = vq.get_vq_desc()
        if got is None:
            return
        head, iov, out_num, in_num = got
        if in_num:
            errx("Input buffers in output queue?")
        length = _writev_all(1, iov)
        if lgtrace.on: lgtrace.transfer(vq, length)
        vq.add_used_and_trigger(lg, head, length)


def _writev_all(fd, iov):
    """writev() the buffers until all is out (a pipe or a non-blocking
    terminal may take less); returns the byte count.  Dies on a write
    error (say, stdout is a closed pipe): nobody would see the Guest."""
    total = sum(len(b) for b in iov)
    bufs = [b for b in iov if len(b)]
    done = 0
    while bufs:
        try:
            n = os.writev(fd, bufs)
        except BlockingIOError:
            _wait_writable(fd)
            continue
        except InterruptedError:
            continue
        except OSError:
            err("Writing console output")
        done += n
        while bufs and n >= len(bufs[0]):
            n -= len(bufs[0])
            bufs.pop(0)
        if n:
            bufs[0] = bufs[0][n:]
    return total if done >= total else done


def _wait_writable(fd):
    import select
    select.select([], [fd], [], 1.0)


def _warn(msg):
    """warnx(): "lguest: msg" on stderr, and carry on."""
    try:
        sys.stdout.flush()
        sys.stderr.write("lguest: %s\n" % msg)
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def raw_term():
    """If stdin is a terminal, switch off ISIG, ICANON and ECHO, so every key
    (^C included) goes to the Guest; restore_term() puts the modes back.  The
    terminal half of setup_console() in lguest.c: we do it last, just before
    the Guest runs, so that everything that can fail while we set up (the
    Host's engine above all, whose allocator may exit() from C) fails with
    the user's terminal as it was."""
    global _orig_term
    with _term_lock:
        if _term_done:
            return
        try:
            saved = termios.tcgetattr(0)
        except (termios.error, OSError):
            return
        raw = list(saved)
        raw[3] &= ~(termios.ISIG | termios.ICANON | termios.ECHO)
        try:
            termios.tcsetattr(0, termios.TCSANOW, raw)
        except (termios.error, OSError):
            return
        _orig_term = saved
    # The Launcher's own exit paths call restore_term(); this is for any
    # path that ends through the interpreter's exit.
    atexit.register(restore_term)


def setup_console(devices):
    """Create the console device: a receive queue whose kicks re-enable
    stdin, and a transmit queue written to stdout (stdin goes raw later:
    raw_term()).  Returns the Device.  Mirrors setup_console() in lguest.c."""
    dev = devices.new_device("console", VIRTIO_ID_CONSOLE, 0,
                             handle_console_input)
    dev.priv = ConsoleAbort()
    # Input first, then output: the Guest numbers them that way.  Adding a
    # receive buffer kicks the first queue, which means "watch stdin again".
    dev.add_virtqueue(VIRTQUEUE_NUM, devices.enable_fd)
    dev.add_virtqueue(VIRTQUEUE_NUM, handle_console_output)
    devices.say("device %u: console" % devices.device_num)
    devices.device_num += 1
    return dev
