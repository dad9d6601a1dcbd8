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

The done pipe carries fixed-size records (DONE, two u32s) rather than the
C's single byte, because of one thing the C never had to think about:
unicorn caches translated Guest code and never notices memory another
process writes.  So before a request's "done" record the worker lists every
Guest buffer it filled, and the Launcher drops unicorn's translations there
before the Guest can run code it read from disk.

  (gpa, len)          the worker filled Guest memory [gpa, gpa+len)
  (0, 0)              one request is complete
  (RESET_ACK, 0)      the worker has forgotten its place in the ring
  (DYING, n) + n bytes  the worker is dying: why, for the Launcher to say
"""

import os
import select
import stat
import struct

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
DONE = struct.Struct("=II")
RESET_ACK = 0xFFFFFFFE
DYING = 0xFFFFFFFF
#: the longest reason a DYING record carries (one atomic pipe write in all)
WHY_MAX = 1024
#: bytes on the workpipe
WORK_KICK = 0x00
WORK_RESET = 0x52        # "R"


class VblkInfo:
    """The block device's state in the Launcher (dev.priv); mirrors struct
    vblk_info in lguest.c.

    fd: the disk image; len: its size in bytes when opened (the Guest may
    never make it longer); workpipe: our (write) end of the pipe to the
    worker; pid: the worker's; serial: what GET_ID answers (bytes)."""

    def __init__(self, fd, length, serial, verbose, batch=False):
        self.fd = fd
        self.len = length
        self.serial = serial
        self.verbose = verbose
        self.batch = batch        # one done write per pass (serve_ring)
        self.workpipe = None
        self.pid = None
        self.partial = b""        # an incomplete DONE record read so far
        self.why = None           # the worker's last words (str), once sent


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


def service_io(vq, vblk, done_fd, pending=None):
    """Serve one request from the block virtqueue, if there is one; mirrors
    service_io() in lguest.c (with the 3.16 Launcher's FLUSH and the
    GET_ID serial added).  Returns False when the ring is empty.

    A request is: the 16-byte virtio_blk_outhdr, data buffers (readable
    for OUT, writable for IN/GET_ID), and the 1-byte status last.  Bad
    shapes are the Guest's fault and fatal ("Bad virtblk cmd ...", "Bad
    iovec size ..."); a write past the end of the disk is fatal ("Write
    past end %u+%u") and never touches the file; a failing disk is not:
    the Guest gets VIRTIO_BLK_S_IOERR.

    The done records go down done_fd at once, or onto the list pending
    if one is given (see serve_ring)."""
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
    if lgtrace.on: lgtrace.blk_request(vq, rtype, sector, iov)

    if rtype == VIRTIO_BLK_T_OUT:
        bufs = iov[1:out_num]
        total = sum(len(b) for b in bufs)
        # The C wrote first and truncated the file back afterwards; we
        # look first, so a bad Guest can't even scribble on the last
        # sectors before it dies.
        if off + total > vblk.len:
            errx("Write past end %u+%u" % (off, total))
        try:
            ret = os.pwritev(fd, bufs, off) if bufs else 0
        except OSError:
            ret = -1        # EIO, ENOSPC...: the Guest's problem to see
        _say(vblk, "WRITE to sector %u: %i" % (sector, ret))
        status = VIRTIO_BLK_S_OK if ret == total else VIRTIO_BLK_S_IOERR
        wlen = VIRTIO_BLK_INHDR_SIZE
    elif rtype == VIRTIO_BLK_T_IN:
        bufs = iov[out_num:out_num + in_num - 1]
        total = sum(len(b) for b in bufs)
        if off > vblk.len:
            ret = 0     # nothing there (and a u64 sector can overflow off_t)
        else:
            try:
                ret = os.preadv(fd, bufs, off) if bufs else 0
            except OSError:
                ret = -1
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
    # Used ring first, then the done record: by the time the Launcher
    # interrupts the Guest, the Guest can see the request finished.
    vq.add_used(head, wlen)
    records = b"".join(DONE.pack(gpa, ln) for gpa, ln in filled)
    records += DONE.pack(0, 0)
    STATS.bump("blk_requests")
    if pending is not None:
        pending.append(records)
    else:
        _send_done(done_fd, records)
    return True


def _send_done(done_fd, records):
    # Count first: whoever reads the records may read the counters next.
    STATS.bump("blk_done_writes")
    STATS.bump("blk_done_bytes", len(records))
    _write_all(done_fd, records)


def serve_ring(vq, vblk, done_fd):
    """Serve every request in the ring.  Like the C, each completion is
    reported as soon as it is done (the Guest's first request doesn't wait
    for its neighbours); with vblk.batch, one write reports the whole
    pass instead (fewer Waker wake-ups, later first completion): an
    experiment for bench/block.py, off by default."""
    if not vblk.batch:
        while service_io(vq, vblk, done_fd):
            pass
        return
    pending = []
    try:
        while service_io(vq, vblk, done_fd, pending):
            pass
    finally:
        if pending:
            _send_done(done_fd, b"".join(pending))


def io_worker(vq, vblk, workpipe, done_fd):
    """The worker's main loop; mirrors io_thread() in lguest.c.  Each byte
    down workpipe is a kick (serve every request in the ring) or a reset
    (forget our place in the ring, and acknowledge).  EOF means the
    Launcher is gone: exit quietly.  A bad Guest ends it: the reason goes
    to the Launcher in a DYING record, and the Launcher dies with it, as the
    C's thread did with errx() in the Launcher's own process: so the
    reason is the last line, after anything the Launcher printed meanwhile,
    and is never lost to the clean-up ending us first."""
    try:
        while True:
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
                    _write_all(done_fd, DONE.pack(RESET_ACK, 0))
                else:
                    STATS.bump("blk_kicks")
                    kicked = True
            # Many kicks in one read are one pass over the ring.
            if kicked:
                serve_ring(vq, vblk, done_fd)
    except LauncherError as e:
        why = str(e).encode(errors="replace")[:WHY_MAX]
        try:
            _write_all(done_fd, DONE.pack(DYING, len(why)) + why)
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
        errx(vblk.why)
    errx("I/O worker died")


def _take_records(lg, dev, data):
    """Act on done-pipe bytes: drop unicorn's translations of what the
    worker filled; returns (requests completed, resets acknowledged).  A
    DYING record's reason is kept in vblk.why."""
    vblk = dev.priv
    data = vblk.partial + data
    done = resets = 0
    at = 0
    while len(data) - at >= DONE.size:
        gpa, length = DONE.unpack_from(data, at)
        if gpa == DYING:
            if len(data) - at - DONE.size < length:
                break                   # the rest of it comes with the next read
            start = at + DONE.size
            vblk.why = data[start:start + length].decode(errors="replace")
            at = start + length
            continue
        at += DONE.size
        if gpa == 0 and length == 0:
            done += 1
        elif gpa == RESET_ACK:
            resets += 1
        else:
            lg.drop_translations(gpa, length)
    vblk.partial = data[at:]
    if lgtrace.on: lgtrace.completed(dev, done)
    return done, resets


def handle_io_finish(lg, dev):
    """The done pipe is readable: the worker finished requests; mirrors
    handle_io_finish() in lguest.c.  Reads what is there (the C read one
    byte a time; one interrupt per batch does as well), drops unicorn's
    stale translations, and interrupts the Guest.  EOF: the worker died
    (see _worker_gone).  Returns True: keep watching."""
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
    is full, the worker has plenty of kicks to read already."""
    vblk = vq.dev.priv
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
    still get their translations dropped; the Guest no longer wants their
    interrupt."""
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
    # PYLGUEST_BLK_BATCH=1: the batching experiment of bench/block.py.
    vblk = VblkInfo(fd, length, serial, verbose,
                    batch=os.environ.get("PYLGUEST_BLK_BATCH") == "1")

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
