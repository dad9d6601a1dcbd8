"""The virtio block device, and the I/O worker that serves it.

As in the 2.6.24 Launcher, disk I/O happens away from the Launcher, so a
slow disk never stops the Guest: the Launcher's part of a request is one
byte down the workpipe.  The C used a clone(CLONE_VM) thread; we fork a
process, which sees the very same Guest memory because that is one
MAP_SHARED mapping made before the fork.  The worker takes requests straight
off the vring, preadv()s and pwritev()s straight into and out of the Guest's
buffers, puts them in the used ring, and says so down the done pipe.  The
Waker sees the done pipe readable and BREAKs the Guest; the Launcher's
handle_io_finish() reads the pipe and interrupts the Guest.

The done pipe carries fixed-size records (DONE: three u32s) rather than the
C's single byte, because of one thing the C never had to think about:
unicorn caches translated Guest code and never notices memory another
process writes.  So the worker lists every Guest buffer it filled, and the
Launcher drops unicorn's translations there *before* it puts the request in
the used ring: the Guest can't see a request complete (and run code it read
from disk) while stale translations of that memory remain.  That is why the
Launcher calls add_used() here, where the C's thread did it itself.

  (FILLED, gpa, len)      the worker filled Guest memory [gpa, gpa+len)
  (USED, head, len)       request head is complete, len bytes written into
                          it: add_used() it (after the FILLED before it)
  (RESET_ACK, 0, 0)       the worker has forgotten its place in the ring
  (DYING, status, n)      the worker is dying with that exit status; n bytes
    + n bytes             of its reason (at most WHY_MAX) follow, for the
                          Launcher to say last as it dies with it

Every request's data is in the file or in Guest memory before its USED
record is written, so a Launcher killed at any moment never leaves the
Guest believing in a write the disk has not had.

Two things keep the traffic down, both as the 3.16 Launcher's device threads
did: while the worker is awake it sets VRING_USED_F_NO_NOTIFY, so the Guest
doesn't kick for requests it will find anyway; and it reports a pass over the
ring in two writes (the first request at once, the rest when the ring runs
dry), so one wake-up of the Launcher and one interrupt cover many requests.
Neighbouring reads in a pass are one preadv() (ReadRun).
"""

import os
import select
import stat
import struct
import threading
import time

import lgtrace
from waker.procs import fork_child
from waker.stats import STATS

from .abi import (BLK_CONFIG_LEN, BLK_CONFIG_OFF_CAPACITY,
                  BLK_CONFIG_OFF_SEG_MAX, SECTOR_SIZE, U32, U64,
                  VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_SEG_MAX,
                  VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_INHDR_SIZE,
                  VIRTIO_BLK_OUTHDR, VIRTIO_BLK_OUTHDR_SIZE,
                  VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
                  VIRTIO_BLK_T_BARRIER, VIRTIO_BLK_T_FLUSH,
                  VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
                  VIRTIO_BLK_T_SCSI_CMD, VIRTIO_ID_BLOCK, VIRTQUEUE_NUM)
from .errors import LauncherError, err, errx

#: one record on the done pipe (native order: both ends are this machine)
DONE = struct.Struct("=III")
FILLED = 1
USED = 2
RESET_ACK = 3
DYING = 4
#: the longest reason a DYING record carries (one atomic pipe write in all)
WHY_MAX = 1024
#: After a pass the worker looks at the ring once more this long after it let
#: the Guest kick again, even with no kick (see serve_ring).
IDLE_RECHECK = 0.001
#: A completion waits at most about this long for the rest of its pass
#: before the done pipe hears of it (a pass of big requests can be long).
BATCH_SECS = 0.001
#: bytes on the workpipe
WORK_KICK = 0x00
WORK_RESET = 0x52        # "R"


class VblkInfo:
    """The block device's state in the Launcher (dev.priv); mirrors struct
    vblk_info in lguest.c.

    fd: the disk image; len: its size in bytes when opened (the Guest may
    never make it longer); workpipe: our (write) end of the pipe to the
    worker; pid: the worker's; serial: what GET_ID answers (bytes)."""

    def __init__(self, fd, length, serial, verbose):
        self.fd = fd
        self.len = length
        self.serial = serial
        self.verbose = verbose
        self.workpipe = None
        self.pid = None
        self.partial = b""        # an incomplete DONE record read so far
        self.why = None           # the worker's last words (str), once sent
        self.why_status = 1       # and the exit status it died with


# --- The worker ---------------------------------------------------------

def _say(vblk, msg):
    """verbose() from the worker: straight to fd 1, never through the
    Launcher's (inherited, possibly non-empty) stdio buffer."""
    if vblk.verbose:
        try:
            os.write(1, (msg + "\n").encode())
        except OSError:
            pass


def _convert_len(buf, size, name):
    """The length half of _convert() in lguest.c: a header buffer must be
    exactly the size of its struct.  (Its alignment check we drop: we
    unpack bytes, so alignment can't hurt us.)"""
    if len(buf) != size:
        errx("Bad iovec size %u for %s" % (len(buf), name))


def _fill(bufs, data):
    """Copy data into the buffers in order; returns bytes copied."""
    done = 0
    for buf in bufs:
        if done == len(data):
            break
        n = min(len(buf), len(data) - done)
        buf[:n] = data[done:done + n]
        done += n
    return done


def _filled(addrs, nbytes):
    """The (gpa, len) ranges covering the first nbytes of the buffers at
    addrs, with neighbours merged: what unicorn must forget."""
    out = []
    for gpa, length in addrs:
        if nbytes <= 0:
            break
        length = min(length, nbytes)
        nbytes -= length
        if length == 0:
            continue
        if out and out[-1][0] + out[-1][1] == gpa:
            out[-1] = (out[-1][0], out[-1][1] + length)
        else:
            out.append((gpa, length))
    return out


def service_io(vq, vblk, done, run=None):
    """Serve one request from the block virtqueue, if there is one; mirrors
    service_io() in lguest.c (with the 3.16 Launcher's FLUSH and the
    GET_ID serial added).  Returns False when the ring is empty.

    A request is: the 16-byte virtio_blk_outhdr, data buffers (readable
    for OUT, writable for IN/GET_ID), and the 1-byte status last.  Bad
    shapes are the Guest's fault and fatal ("Bad virtblk cmd ...", "Bad
    iovec size ..."); a write past the end of the disk is fatal ("Write
    past end %u+%u") and never touches the file; a failing disk is not:
    the Guest gets VIRTIO_BLK_S_IOERR.

    done is a DoneBatch (or a done pipe fd: then the records go at once):
    the request's FILLED ranges and its USED record go there.  The Guest
    sees the request complete only when the Launcher has read them.  With
    a ReadRun, a read joins it (served later with its neighbours, in ring
    order: see ReadRun); anything else first serves the run."""
    got = vq.get_vq_desc()
    if got is None:
        return False
    head, iov, out_num, in_num = got
    addrs = vq.last_addrs

    if out_num == 0 or in_num == 0:
        errx("Bad virtblk cmd %u out=%u in=%u" % (head, out_num, in_num))
    _convert_len(iov[0], VIRTIO_BLK_OUTHDR_SIZE, "struct virtio_blk_outhdr")
    status_buf = iov[out_num + in_num - 1]
    _convert_len(status_buf, VIRTIO_BLK_INHDR_SIZE, "struct virtio_blk_inhdr")
    # Copy the header out once: the Guest could change it as we go.
    rtype, _ioprio, sector = VIRTIO_BLK_OUTHDR.unpack(iov[0])
    off = sector * SECTOR_SIZE
    if run is not None and rtype != VIRTIO_BLK_T_IN:
        run.serve()                 # earlier reads first: ring order
    fd = vblk.fd
    filled = []

    # We never offer VIRTIO_BLK_F_BARRIER, but the old Launcher's answer
    # to one was the only one it had: sync everything first.
    if rtype & VIRTIO_BLK_T_BARRIER:
        try:
            os.fdatasync(fd)
        except OSError:
            pass
        rtype &= ~VIRTIO_BLK_T_BARRIER
    # (A read that joins a run is on the trace when the run serves it.)
    if lgtrace.on and (run is None or rtype != VIRTIO_BLK_T_IN):
        lgtrace.blk_request(vq, rtype, sector, iov)

    if rtype == VIRTIO_BLK_T_OUT:
        bufs = iov[1:out_num]
        total = sum(map(len, bufs))
        # The C wrote first and truncated the file back afterwards; we
        # look first, so a bad Guest can't even scribble on the last
        # sectors before it dies.
        if off + total > vblk.len:
            errx("Write past end %u+%u" % (off, total))
        try:
            ret = os.pwritev(fd, bufs, off) if bufs else 0
        except OSError:
            ret = -1        # EIO, ENOSPC...: the Guest's problem to see
        if vblk.verbose:
            _say(vblk, "WRITE to sector %u: %i" % (sector, ret))
        status = VIRTIO_BLK_S_OK if ret == total else VIRTIO_BLK_S_IOERR
        wlen = VIRTIO_BLK_INHDR_SIZE
    elif rtype == VIRTIO_BLK_T_IN:
        bufs = iov[out_num:out_num + in_num - 1]
        total = sum(map(len, bufs))
        if run is not None:
            if bufs and off + total <= vblk.len:
                run.add(head, off, sector, bufs, total, status_buf,
                        addrs[out_num:out_num + in_num - 1], iov)
                return True
            run.serve()             # earlier reads first: ring order
            if lgtrace.on: lgtrace.blk_request(vq, rtype, sector, iov)
        if off > vblk.len:
            ret = 0     # nothing there (and a u64 sector can overflow off_t)
        else:
            try:
                ret = os.preadv(fd, bufs, off) if bufs else 0
            except OSError:
                ret = -1
        if vblk.verbose:
            _say(vblk, "READ from sector %u: %i" % (sector, ret))
        if ret == total:
            status = VIRTIO_BLK_S_OK
        else:           # past the end, or a failing disk
            status = VIRTIO_BLK_S_IOERR
        got_bytes = max(ret, 0)
        wlen = VIRTIO_BLK_INHDR_SIZE + got_bytes
        filled = _filled(addrs[out_num:out_num + in_num - 1], got_bytes)
    elif rtype == VIRTIO_BLK_T_FLUSH:
        try:
            os.fdatasync(fd)
            status = VIRTIO_BLK_S_OK
        except OSError:
            status = VIRTIO_BLK_S_IOERR
        wlen = VIRTIO_BLK_INHDR_SIZE
    elif rtype == VIRTIO_BLK_T_GET_ID:
        bufs = iov[out_num:out_num + in_num - 1]
        serial = vblk.serial[:VIRTIO_BLK_ID_BYTES]
        # The driver reads up to 20 bytes, NUL-padded when shorter.
        n = _fill(bufs, serial.ljust(VIRTIO_BLK_ID_BYTES, b"\0"))
        status = VIRTIO_BLK_S_OK
        wlen = VIRTIO_BLK_INHDR_SIZE + n
        filled = _filled(addrs[out_num:out_num + in_num - 1], n)
    else:
        if rtype == VIRTIO_BLK_T_SCSI_CMD:
            _say(vblk, "Scsi commands unsupported")
        status = VIRTIO_BLK_S_UNSUPP
        wlen = VIRTIO_BLK_INHDR_SIZE

    status_buf[0] = status
    if lgtrace.on: lgtrace.blk_status(vq, status)
    if not isinstance(done, DoneBatch):
        batch = DoneBatch(done)
        batch.add(filled, head, wlen)
        batch.send()
    else:
        done.add(filled, head, wlen)
    STATS.bump("blk_requests")
    return True


class DoneBatch:
    """Completions not yet told to the Launcher: the Guest memory filled
    (neighbouring ranges merged, across requests too) and the (head, len)
    of each finished request, in order.  send() writes them down the done
    pipe in one write(): ranges first, so the Launcher drops every stale
    translation before it puts any of these requests in the used ring."""

    def __init__(self, done_fd):
        self.done_fd = done_fd
        self.ranges = []
        self.used = []
        self.since = None         # time.monotonic() of the oldest completion

    def add(self, filled, head, length):
        if self.since is None:
            self.since = time.monotonic()
        ranges = self.ranges
        for gpa, ln in filled:
            if ranges and ranges[-1][0] + ranges[-1][1] == gpa:
                ranges[-1] = (ranges[-1][0], ranges[-1][1] + ln)
            else:
                ranges.append((gpa, ln))
        self.used.append((head, length))

    def age(self):
        return 0.0 if self.since is None else time.monotonic() - self.since

    def send(self):
        if not self.used:
            return
        pack = DONE.pack
        records = b"".join([pack(FILLED, gpa, ln) for gpa, ln in self.ranges]
                           + [pack(USED, head, ln & 0xFFFFFFFF) for head, ln in self.used])
        # Count first: whoever reads the records may read the counters next.
        STATS.bump("blk_done_writes")
        STATS.bump("blk_done_bytes", len(records))
        self.ranges = []
        self.used = []
        self.since = None
        _write_all(self.done_fd, records)


class ReadRun:
    """Reads of neighbouring sectors, one after another in the ring, served
    by one preadv() (the 3.16 Guest reads a block device's page cache a
    4 KiB request at a time: 32 requests for one readahead window).  Each
    keeps its own status, FILLED ranges and USED record, in ring order.
    If the one preadv() comes back short or failing, each request is read
    again on its own, so each gets exactly the status it would alone.

    add() may serve what came before (not a neighbour, or the run is full);
    serve() before anything else completes, and before the batch is sent."""

    MAX_IOVECS = 256            # well under the host's IOV_MAX (1024)
    MAX_BYTES = 1 << 20

    def __init__(self, vq, vblk, done):
        self.vq = vq
        self.vblk = vblk
        self.done = done
        self.reqs = []
        self.end = None
        self.iovecs = 0
        self.bytes = 0

    def add(self, head, off, sector, bufs, total, status_buf, addrs, iov):
        if self.reqs and (off != self.end or self.iovecs + len(bufs) > self.MAX_IOVECS
                          or self.bytes + total > self.MAX_BYTES):
            self.serve()
        self.reqs.append((head, off, sector, bufs, total, status_buf, addrs, iov))
        self.end = off + total
        self.iovecs += len(bufs)
        self.bytes += total

    def serve(self):
        reqs = self.reqs
        if not reqs:
            return
        self.reqs = []
        self.iovecs = self.bytes = 0
        fd = self.vblk.fd
        if len(reqs) > 1:
            want = sum(r[4] for r in reqs)
            try:
                ret = os.preadv(fd, [b for r in reqs for b in r[3]], reqs[0][1])
            except OSError:
                ret = -1
            if ret == want:
                for req in reqs:
                    self._complete(req, req[4])
                return
        for req in reqs:
            # On its own: on the trace around its own preadv().
            if lgtrace.on: lgtrace.blk_request(self.vq, VIRTIO_BLK_T_IN, req[2], req[7])
            try:
                ret = os.preadv(fd, req[3], req[1])
            except OSError:
                ret = -1
            self._complete(req, ret, traced=True)

    def _complete(self, req, ret, traced=False):
        head, _off, sector, _bufs, total, status_buf, addrs, iov = req
        vblk = self.vblk
        if vblk.verbose:
            _say(vblk, "READ from sector %u: %i" % (sector, ret))
        status = VIRTIO_BLK_S_OK if ret == total else VIRTIO_BLK_S_IOERR
        status_buf[0] = status
        if lgtrace.on:
            if not traced:
                lgtrace.blk_request(self.vq, VIRTIO_BLK_T_IN, sector, iov)
            lgtrace.blk_status(self.vq, status)
        got = max(ret, 0)
        self.done.add(_filled(addrs, got), head, VIRTIO_BLK_INHDR_SIZE + got)
        STATS.bump("blk_requests")


def full_barrier():
    """A full memory barrier (x86 "mfence"): our stores are visible to the
    other processes and threads before our next load.  Python has no word
    for it; taking and releasing a lock does it, since CPython's locks are
    built on locked (lock cmpxchg / xadd) instructions, which x86 orders
    against every load and store."""
    _BARRIER_LOCK.acquire()
    _BARRIER_LOCK.release()


_BARRIER_LOCK = threading.Lock()


def serve_ring(vq, vblk, done_fd):
    """Serve requests until the ring stays empty; the 3.16 Launcher's
    wait_for_vq_desc() loop in its block thread, in our worker.

    While we are awake the Guest is told not to kick (VRING_USED_F_NO_NOTIFY):
    we will find what it adds.  The first completion of a pass goes down the
    done pipe at once, the rest together when the ring runs dry (when 3.16
    sent its interrupt), or sooner when the oldest has waited BATCH_SECS.  Before going back to sleep we let
    the Guest kick again and look once more, for a request added while it
    still saw the flag; the caller looks once more after IDLE_RECHECK (see
    io_worker)."""
    batch = DoneBatch(done_fd)
    run = ReadRun(vq, vblk, batch)
    vq.suppress_notify(True)
    try:
        while True:
            first = True
            while service_io(vq, vblk, batch, run):
                # The first request of a pass goes at once: the Guest is likeliest
                # to be waiting for it (a readahead window's first page, which the
                # reader wants now; a lone synchronous read).  The rest wait for
                # their neighbours.
                if first or batch.age() >= BATCH_SECS:
                    first = False
                    run.serve()
                    batch.send()
            run.serve()
            batch.send()
            vq.suppress_notify(False)
            full_barrier()
            if vq.avail_idx() == vq.last_avail_idx:
                return
            vq.suppress_notify(True)
    except LauncherError:
        # Whatever we took from the ring is answered, even on our way out
        # (a bad request after it kills us: the Launcher dies too).  If the
        # Launcher is gone, our reason still goes out (see io_worker).
        try:
            try:
                run.serve()
            finally:
                batch.send()
        except OSError:
            pass
        raise


def io_worker(vq, vblk, workpipe, done_fd):
    """The worker's main loop; mirrors io_thread() in lguest.c.  Each byte
    down workpipe is a kick (serve every request in the ring) or a reset
    (forget our place in the ring, and acknowledge).  EOF means the
    Launcher is gone: exit quietly.  A bad Guest ends it: the reason goes
    to the Launcher in a DYING record, and the Launcher dies with it, as the
    C's thread did with errx() in the Launcher's own process: so the
    reason is the last line, after anything the Launcher printed meanwhile,
    and is never lost to the clean-up ending us first.

    After a pass we wait for the next kick at most IDLE_RECHECK, then look
    at the ring once without one.  The Guest's side of the NO_NOTIFY
    handshake (store avail->idx, barrier, load used->flags) runs on
    unicorn, whose Guest barriers are no host barriers (TCG emits them only
    for parallel vCPUs): on the host's store buffer the Guest can still read
    our old flag just as we read its old index, and then nobody would kick.
    That window is nanoseconds wide; a millisecond later both stores are
    long visible, so this one look closes it.  Never after a reset: the
    ring is the Launcher's to clear until the next kick."""
    recheck = False
    try:
        while True:
            if recheck:
                recheck = False
                try:
                    ready, _, _ = select.select([workpipe], [], [], IDLE_RECHECK)
                except InterruptedError:
                    ready = [workpipe]
                if not ready:
                    if vq.avail_idx() != vq.last_avail_idx:
                        STATS.bump("blk_rechecks")
                        serve_ring(vq, vblk, done_fd)
                        recheck = True
                    continue
            try:
                cmds = os.read(workpipe, 4096)
            except InterruptedError:
                continue
            if not cmds:
                return
            STATS.bump("blk_wakeups")
            if lgtrace.on: lgtrace.worker_kicks(cmds)
            kicked = False
            for c in cmds:
                if c == WORK_RESET:
                    if kicked:
                        serve_ring(vq, vblk, done_fd)
                        kicked = False
                    vq.reset()
                    _write_all(done_fd, DONE.pack(RESET_ACK, 0, 0))
                    recheck = False
                else:
                    STATS.bump("blk_kicks")
                    kicked = True
            # Many kicks in one read are one pass over the ring.
            if kicked:
                serve_ring(vq, vblk, done_fd)
                recheck = True
    except LauncherError as e:
        why = str(e).encode(errors="replace")[:WHY_MAX]
        try:
            _write_all(done_fd, DONE.pack(DYING, e.status, len(why)) + why)
        except OSError:
            raise e from None     # nobody to tell: say it ourselves
        os._exit(e.status)


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except InterruptedError:
            continue
        view = view[n:]


# --- The Launcher's side ------------------------------------------------

def _worker_gone(vblk):
    """The worker died.  If it told us why, die with that; else say so."""
    if vblk.why is not None:
        errx(vblk.why, vblk.why_status)
    errx("I/O worker died")


def _take_records(lg, dev, data):
    """Act on done-pipe bytes: drop unicorn's translations of what the
    worker filled, then put the finished requests in the used ring (in
    that order: see the top of this file).  Returns (requests completed,
    resets acknowledged).  A DYING record's reason and status are kept in
    vblk.why and vblk.why_status."""
    vblk = dev.priv
    vq = dev.vq
    data = vblk.partial + data
    done = resets = 0
    at = 0
    while len(data) - at >= DONE.size:
        kind, a, b = DONE.unpack_from(data, at)
        if kind == DYING:
            if len(data) - at - DONE.size < b:
                break                   # the rest of it comes with the next read
            start = at + DONE.size
            vblk.why = data[start:start + b].decode(errors="replace")
            vblk.why_status = a
            at = start + b
            continue
        at += DONE.size
        if kind == FILLED:
            lg.drop_translations(a, b)
        elif kind == USED:
            vq.add_used(a, b)
            done += 1
        elif kind == RESET_ACK:
            resets += 1
    vblk.partial = data[at:]
    if lgtrace.on: lgtrace.completed(dev, done)
    return done, resets


def handle_io_finish(lg, dev):
    """The done pipe is readable: the worker finished requests; mirrors
    handle_io_finish() in lguest.c.  Reads what is there (the C read one
    byte a time; one interrupt per batch does as well), drops unicorn's
    stale translations, puts the requests in the used ring and interrupts
    the Guest.  EOF: the worker died (see _worker_gone).  Returns True:
    keep watching."""
    vblk = dev.priv
    STATS.bump("blk_finish_calls")
    try:
        data = os.read(dev.fd, 65536)
    except BlockingIOError:
        return True
    except InterruptedError:
        return True
    except OSError:
        data = b""
    if not data:
        _worker_gone(vblk)
    done, _ = _take_records(lg, dev, data)
    if vblk.why is not None:
        # It is dying: so are we, with its reason (nothing after it).
        _worker_gone(vblk)
    if done:
        STATS.bump("blk_done_seen", done)
        STATS.bump("blk_irqs")
        dev.vq.trigger_irq(lg)
    return True


def handle_virtblk_output(lg, vq):
    """The Guest kicked the block queue: wake the worker; mirrors
    handle_virtblk_output() in lguest.c.  The pipe is non-blocking: if it
    is full, the worker has plenty of kicks to read already.

    We also tell the Guest to stop kicking (VRING_USED_F_NO_NOTIFY), which
    the worker would do itself once awake: a process takes a while to be
    scheduled, and every request the Guest adds meanwhile would cost
    another NOTIFY exit for nothing.  Flag first, kick second: the worker
    reads this kick after our store, and clears the flag only at the end
    of the pass the kick starts, so the flag is never left up with nobody
    coming."""
    vblk = vq.dev.priv
    vq.suppress_notify(True)
    try:
        os.write(vblk.workpipe, bytes((WORK_KICK,)))
    except BlockingIOError:
        pass
    except OSError:
        # The worker is gone; did it tell us why?
        _drain_for_death(lg, vq.dev)


def _drain_for_death(lg, dev):
    """The worker can't be written to: read what it left us and die."""
    vblk = dev.priv
    while True:
        try:
            data = os.read(dev.fd, 65536)
        except OSError:
            data = b""
        if not data:
            _worker_gone(vblk)
        _take_records(lg, dev, data)


def reset_virtblk(lg, dev):
    """The Guest reset the block device (Device.on_reset): tell the worker
    to forget its place in the ring and wait until it has, so the ring
    can be cleared under nobody's feet.  Completions that arrive meanwhile
    still get their translations dropped and go in the used ring about to
    be cleared; the Guest no longer wants their interrupt."""
    vblk = dev.priv
    data = bytes((WORK_RESET,))
    while True:
        try:
            os.write(vblk.workpipe, data)
            break
        except BlockingIOError:
            select.select([], [vblk.workpipe], [])
        except InterruptedError:
            continue
        except OSError:
            _drain_for_death(lg, dev)
    while True:
        try:
            select.select([dev.fd], [], [])
            data = os.read(dev.fd, 65536)
        except InterruptedError:
            continue
        except OSError:
            data = b""
        if not data:
            _worker_gone(vblk)
        _, resets = _take_records(lg, dev, data)
        if resets:
            return


def setup_block_file(devices, filename, verbose=False):
    """Give the Guest a virtio block device backed by filename; mirrors
    setup_block_file() in lguest.c (3.16's config space and features).

    Opens the file read-write (err "Failed to open %s"; it must be a regular
    file or a block device: its size is found by seeking to its end), offers
    SEG_MAX and FLUSH, puts capacity (512-byte sectors, u64 @0) and seg_max
    (VIRTQUEUE_NUM - 2, u32 @12) in the 16-byte config, and forks the I/O
    worker: this must happen before the Host exists.  Returns the Device."""
    try:
        fd = os.open(filename, os.O_RDWR)
    except OSError:
        err("Failed to open %s" % filename)
    # The worker reads and writes by offset: a pipe, a FIFO or a character
    # device has none, and the capacity is where the end is.
    try:
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
            errx("Block file %s is not a regular file or a block device"
                 % filename)
        length = os.lseek(fd, 0, os.SEEK_END)
    except OSError:
        err("Finding the size of block file %s" % filename)
    nth = sum(1 for d in devices.devs if d.type == VIRTIO_ID_BLOCK)
    serial = ("pylguest-vd%s" % chr(ord("a") + nth % 26)).encode()
    vblk = VblkInfo(fd, length, serial, verbose)

    try:
        done_r, done_w = os.pipe()
        work_r, work_w = os.pipe()
    except OSError:
        err("Creating pipes for the block device")

    dev = devices.new_device("block", VIRTIO_ID_BLOCK, done_r, handle_io_finish)
    dev.priv = vblk
    dev.on_reset = reset_virtblk
    vq = dev.add_virtqueue(VIRTQUEUE_NUM, handle_virtblk_output)
    dev.add_feature(VIRTIO_BLK_F_SEG_MAX)
    dev.add_feature(VIRTIO_BLK_F_FLUSH)

    cap = length // SECTOR_SIZE
    config = bytearray(BLK_CONFIG_LEN)
    U64.pack_into(config, BLK_CONFIG_OFF_CAPACITY, cap)
    # Two descriptors of every request are the header and the status.
    U32.pack_into(config, BLK_CONFIG_OFF_SEG_MAX, VIRTQUEUE_NUM - 2)
    dev.set_config(bytes(config))

    try:
        vblk.pid = fork_child(
            "block", lambda: io_worker(vq, vblk, work_r, done_w),
            {work_r, done_w, fd})
    except OSError:
        err("Creating the block I/O worker")
    # Our ends only: the worker must see EOF on the workpipe if we die,
    # and we must see EOF on the done pipe if it does.
    os.close(work_r)
    os.close(done_w)
    os.set_blocking(work_w, False)
    vblk.workpipe = work_w

    devices.say("device %u: virtblock %u sectors" % (devices.device_num, cap))
    devices.device_num += 1
    return dev
