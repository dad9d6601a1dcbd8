"""Unit tests for devices/block.py: the virtio block device and its I/O
worker process, driven through rings built in Guest memory from Python.

The worker is really forked, really preadv()s and pwritev()s a real file,
and the Launcher side (handle_io_finish) really reads its done pipe; only
the Host is a fake that records interrupts and dropped translations.
"""
import errno
import os
import random
import select
import signal
import struct
import subprocess
import tempfile
import time

import pytest

from devices.abi import (PAGE_SIZE, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK,
                         VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH,
                         VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
                         VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_SCSI_CMD,
                         VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_ID_BLOCK,
                         USED_OFF_FLAGS, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE)
from devices.block import handle_io_finish, setup_block_file
from devices.devpage import DeviceList
from devices.errors import LauncherError
from devices.memory import GuestMemory
from conftest import FakeLg, GuestRing, page_of, parse_device_page, wait_child_exit
from waker import procs

MEM = 4 << 20
DISK = 256 * 1024


class Rig:
    """A Launcher's worth of block device: memory, device list, a disk
    image, the worker, and a Guest-side ring."""

    def __init__(self, path, verbose=False):
        self.path = path
        self.mem = GuestMemory(MEM)
        self.devices = DeviceList(self.mem, verbose=verbose)
        self.dev = setup_block_file(self.devices, path, verbose)
        self.vq = self.dev.vqs[0]
        self.ring = GuestRing(self.mem, self.vq)
        self.lg = FakeLg()
        self.pid = self.dev.priv.pid

    def request(self, rtype, sector, outs=(), ins=(), status_len=1, hdr_len=16):
        """Queue one request; returns (head, status address)."""
        hdr = self.ring.alloc(hdr_len, struct.pack("<IIQ", rtype, 0, sector)[:hdr_len]
                              .ljust(hdr_len, b"\0"))
        st = self.ring.alloc(status_len, b"\xee" * status_len)
        head = self.ring.add([(hdr, hdr_len)] + list(outs), list(ins) + [(st, status_len)])
        return head, st

    def kick(self):
        self.devices.handle_output(self.lg, self.vq.pfn << 12)

    def wait_done(self, n, timeout=10):
        """Play the Waker and the Launcher: wait for the done pipe, call
        handle_io_finish, until n requests are in the used ring."""
        got = []
        deadline = time.monotonic() + timeout
        while len(got) < n:
            left = deadline - time.monotonic()
            assert left > 0, "worker didn't finish %d requests" % n
            r, _, _ = select.select([self.dev.fd], [], [], left)
            if r:
                handle_io_finish(self.lg, self.dev)
                got += self.ring.get_used()
        return got

    def status(self, addr):
        return self.mem.view[addr]

    def worker_exit(self, timeout=10):
        """Wait for the worker to end; returns its exit status."""
        return wait_child_exit(self.pid, timeout, "worker")

    def close(self):
        """The Launcher goes away: the worker must see EOF and leave."""
        os.close(self.dev.priv.workpipe)
        os.close(self.dev.fd)
        os.close(self.dev.priv.fd)
        try:
            return self.worker_exit()
        except ChildProcessError:
            return None


@pytest.fixture
def image(tmp_path):
    data = random.Random(6).randbytes(DISK)
    p = tmp_path / "disk.img"
    p.write_bytes(data)
    return p, data


@pytest.fixture
def rig(image):
    r = Rig(str(image[0]))
    yield r
    if r.pid in procs.CHILDREN:
        r.close()


@pytest.fixture
def late_rig(image):
    """A Rig made when the test asks: a worker forked while a fixture is
    being set up keeps pytest's setup-time stderr, and capfd misses what
    it prints."""
    made = []

    def make():
        made.append(Rig(str(image[0])))
        return made[-1]
    yield make
    for r in made:
        if r.pid in procs.CHILDREN:
            r.close()


def test_device_page_entry(rig):
    d = parse_device_page(page_of(rig.devices))[0]
    assert d["type"] == VIRTIO_ID_BLOCK
    assert d["vqs"] == [(128, 1, rig.vq.pfn)]
    assert d["features"] == (1 << 2) | (1 << 9)
    assert len(d["config"]) == 16
    cap, size_max, seg_max = struct.unpack("<QII", d["config"])
    assert (cap, seg_max) == (DISK // 512, 126)


def test_read_straight_into_guest_buffers(rig, image):
    _, data = image
    b1 = rig.ring.alloc(4096)
    b2 = b1 + 4096              # contiguous: one dropped range
    rig.ring.bump += 4096 + 64   # b3 apart: a second range
    b3 = rig.ring.alloc(512)
    head, st = rig.request(VIRTIO_BLK_T_IN, 3, ins=[(b1, 4096), (b2, 4096), (b3, 512)])
    rig.kick()
    assert rig.wait_done(1) == [(head, 1 + 8704)]
    assert rig.status(st) == VIRTIO_BLK_S_OK
    assert bytes(rig.mem.view[b1:b1 + 8192]) == data[3 * 512:3 * 512 + 8192]
    assert bytes(rig.mem.view[b3:b3 + 512]) == data[3 * 512 + 8192:3 * 512 + 8704]
    assert rig.lg.dropped == [(b1, 8192), (b3, 512)]
    assert rig.lg.irqs() == [1]


def test_write_out_of_guest_buffers(rig, image):
    path, data = image
    patch = random.Random(1).randbytes(3000)
    a = rig.ring.alloc(1000, patch[:1000])
    b = rig.ring.alloc(2000, patch[1000:])
    head, st = rig.request(VIRTIO_BLK_T_OUT, 10, outs=[(a, 1000), (b, 2000)])
    rig.kick()
    assert rig.wait_done(1) == [(head, 1)]
    assert rig.status(st) == VIRTIO_BLK_S_OK
    expect = data[:5120] + patch + data[5120 + 3000:]
    assert path.read_bytes() == expect
    assert rig.lg.dropped == []        # nothing of the Guest's was written


def test_flush_get_id_and_unsupported(rig):
    idbuf = rig.ring.alloc(20, b"\xff" * 20)
    h1, s1 = rig.request(VIRTIO_BLK_T_FLUSH, 0)
    h2, s2 = rig.request(VIRTIO_BLK_T_GET_ID, 0, ins=[(idbuf, 20)])
    h3, s3 = rig.request(VIRTIO_BLK_T_SCSI_CMD, 0)
    h4, s4 = rig.request(77, 0)
    rig.kick()
    used = rig.wait_done(4)
    assert used == [(h1, 1), (h2, 21), (h3, 1), (h4, 1)]
    assert [rig.status(s) for s in (s1, s2, s3, s4)] == [
        VIRTIO_BLK_S_OK, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_S_UNSUPP]
    assert bytes(rig.mem.view[idbuf:idbuf + 20]) == b"pylguest-vda".ljust(20, b"\0")


def test_reads_past_the_end_are_ioerr(rig, image):
    _, data = image
    buf = rig.ring.alloc(1024, b"\xaa" * 1024)
    # Half inside, half past the end: what is there is read, status IOERR.
    h1, s1 = rig.request(VIRTIO_BLK_T_IN, DISK // 512 - 1, ins=[(buf, 1024)])
    h2, s2 = rig.request(VIRTIO_BLK_T_IN, 1 << 40, ins=[(rig.ring.alloc(512), 512)])
    # A sector whose byte offset doesn't fit an off_t.
    h3, s3 = rig.request(VIRTIO_BLK_T_IN, (1 << 64) - 1, ins=[(rig.ring.alloc(512), 512)])
    rig.kick()
    assert rig.wait_done(3) == [(h1, 1 + 512), (h2, 1), (h3, 1)]
    assert rig.status(s1) == rig.status(s2) == rig.status(s3) == VIRTIO_BLK_S_IOERR
    assert bytes(rig.mem.view[buf:buf + 512]) == data[-512:]
    assert rig.dev.priv.pid in procs.CHILDREN      # still alive


def test_many_requests_one_kick_in_order(rig, image):
    path, data = image
    rnd = random.Random(9)
    expect = bytearray(data)
    heads = []
    for k in range(100):                 # more than fit at once? no: 100 < 128/2
        if k % 2:
            sector = rnd.randrange(DISK // 512 - 8)
            buf = rig.ring.alloc(4096)
            heads.append(("r", sector, buf) + rig.request(VIRTIO_BLK_T_IN, sector,
                                                          ins=[(buf, 4096)]))
        else:
            sector = rnd.randrange(DISK // 512 - 8)
            blob = rnd.randbytes(4096)
            buf = rig.ring.alloc(4096, blob)
            expect[sector * 512:sector * 512 + 4096] = blob
            heads.append(("w", sector, buf) + rig.request(VIRTIO_BLK_T_OUT, sector,
                                                          outs=[(buf, 4096)]))
        if len(heads) % 20 == 0:
            rig.kick()
            rig.wait_done(20)
    for kind, sector, buf, head, st in heads:
        assert rig.status(st) == VIRTIO_BLK_S_OK
    assert path.read_bytes() == bytes(expect)
    # One interrupt per batch the Launcher saw, never more than requests.
    assert 1 <= len(rig.lg.irqs()) <= 100


def test_reset_then_start_again(rig, image):
    _, data = image
    for _ in range(3):
        rig.request(VIRTIO_BLK_T_FLUSH, 0)
    rig.kick()
    rig.wait_done(3)
    assert rig.vq.last_avail_idx == 0        # the Launcher's copy never moves
    rig.mem.view[rig.dev.desc_addr + 4] = VIRTIO_CONFIG_S_DRIVER_OK
    rig.devices.handle_output(rig.lg, rig.dev.desc_addr)
    rig.mem.view[rig.dev.desc_addr + 4] = 0
    rig.devices.handle_output(rig.lg, rig.dev.desc_addr)
    # The ring is zeroed; a Guest starting over from index 0 is served.
    ring = GuestRing(rig.mem, rig.vq)
    ring.bump = 0x80000
    rig.ring = ring
    buf = ring.alloc(512)
    head, st = rig.request(VIRTIO_BLK_T_IN, 7, ins=[(buf, 512)])
    assert ring.avail_idx() == 1
    rig.kick()
    assert rig.wait_done(1) == [(head, 513)]
    assert bytes(rig.mem.view[buf:buf + 512]) == data[7 * 512:8 * 512]


def test_worker_holds_only_its_fds(rig):
    deadline = time.monotonic() + 5
    while True:
        fds = set(int(f) for f in os.listdir("/proc/%d/fd" % rig.pid))
        if len(fds) <= 6 or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    # stdin/out/err, workpipe, done pipe, disk.
    assert len(fds) == 6, fds


def test_worker_leaves_on_launcher_eof(rig):
    assert rig.close() == 0


def test_open_failure(tmp_path):
    devices = DeviceList(GuestMemory(MEM))
    with pytest.raises(LauncherError) as e:
        setup_block_file(devices, str(tmp_path / "nope.img"))
    assert str(e.value) == "Failed to open %s: No such file or directory" % (
        tmp_path / "nope.img")


# --- deaths ---------------------------------------------------------------

def expect_worker_death(rig, capfd, message):
    """The worker sends its reason down the done pipe and exits 1, saying
    nothing itself; the Launcher's handle_io_finish dies with that reason
    (its one line is the Launcher's to print, last)."""
    rig.kick()
    with pytest.raises(LauncherError) as e:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            r, _, _ = select.select([rig.dev.fd], [], [], 1)
            if r:
                handle_io_finish(rig.lg, rig.dev)
    assert str(e.value) == message
    assert e.value.status == 1
    assert rig.worker_exit() == 1
    assert capfd.readouterr().err == ""


def test_write_past_end_dies_and_file_untouched(capfd, late_rig, image):
    path, data = image
    rig = late_rig()
    buf = rig.ring.alloc(1024, b"\x55" * 1024)
    rig.request(VIRTIO_BLK_T_OUT, DISK // 512 - 1, outs=[(buf, 1024)])
    expect_worker_death(rig, capfd, "Write past end %u+1024" % (DISK - 512))
    assert os.path.getsize(path) == DISK
    assert path.read_bytes() == data


def test_write_at_huge_sector_is_write_past_end(capfd, late_rig, image):
    path, data = image
    rig = late_rig()
    buf = rig.ring.alloc(512, b"\x55" * 512)
    rig.request(VIRTIO_BLK_T_OUT, (1 << 64) - 1, outs=[(buf, 512)])
    expect_worker_death(rig, capfd, "Write past end %u+512" % (((1 << 64) - 1) * 512))
    assert path.read_bytes() == data


@pytest.mark.parametrize("shape,message", [
    ("no_in", "Bad virtblk cmd 0 out=1 in=0"),
    ("short_hdr", "Bad iovec size 15 for struct virtio_blk_outhdr"),
    ("long_status", "Bad iovec size 2 for struct virtio_blk_inhdr"),
    ("loop", "Looped descriptor"),
    ("bad_addr", "Invalid address 0xfffffff0"),
])
def test_bad_requests_kill_the_worker(capfd, late_rig, shape, message):
    rig = late_rig()
    if shape == "no_in":
        hdr = rig.ring.alloc(16, struct.pack("<IIQ", 0, 0, 0))
        rig.ring.add([(hdr, 16)], [])
    elif shape == "short_hdr":
        rig.request(VIRTIO_BLK_T_IN, 0, hdr_len=15)
    elif shape == "long_status":
        rig.request(VIRTIO_BLK_T_IN, 0, status_len=2)
    elif shape == "loop":
        rig.ring.set_desc(0, 0x1000, 16, VRING_DESC_F_NEXT, 1)
        rig.ring.set_desc(1, 0x2000, 1, VRING_DESC_F_NEXT, 0)
        rig.ring.offer(0)
    elif shape == "bad_addr":
        rig.ring.set_desc(0, 0xFFFFFFF0, 16, 0, 0)
        rig.ring.offer(0)
    expect_worker_death(rig, capfd, message)


def test_worker_killed_without_a_word(rig):
    os.kill(rig.pid, signal.SIGKILL)
    assert rig.worker_exit() == -signal.SIGKILL
    with pytest.raises(LauncherError) as e:
        select.select([rig.dev.fd], [], [], 5)
        handle_io_finish(rig.lg, rig.dev)
    assert str(e.value) == "I/O worker died"
    # A kick to a dead worker says the same.
    rig2_err = None
    try:
        rig.kick()
    except LauncherError as e2:
        rig2_err = str(e2)
    assert rig2_err == "I/O worker died"


def test_dying_record_split_across_reads():
    """The Launcher's side of the done pipe: completions before a DYING record
    reach the used ring; a reason arriving over two reads is kept whole, and
    the Launcher dies with it and with the worker's status."""
    from types import SimpleNamespace
    from devices.block import DONE, DYING, FILLED, USED, VblkInfo
    from devices.virtqueue import Virtqueue
    mem = GuestMemory(1 << 20)
    vq = Virtqueue(mem, 8, 1, mem.get_pages(2) // PAGE_SIZE, None)
    ring = GuestRing(mem, vq)
    r, w = os.pipe()
    os.set_blocking(r, False)
    dev = SimpleNamespace(fd=r, vq=vq, priv=VblkInfo(-1, DISK, b"x", False))
    lg = FakeLg()
    why = "Bad virtblk cmd 7 out=1 in=0 \u00e9".encode()
    stream = (DONE.pack(FILLED, 0x3000, 512) + DONE.pack(USED, 5, 513)
              + DONE.pack(DYING, 3, len(why)) + why)
    try:
        os.write(w, stream[:DONE.size * 2 + DONE.size + 4])
        handle_io_finish(lg, dev)           # the reason isn't whole yet
        assert lg.dropped == [(0x3000, 512)]
        assert ring.get_used() == [(5, 513)]
        assert lg.irqs() == [1]
        os.write(w, stream[DONE.size * 3 + 4:])
        with pytest.raises(LauncherError) as e:
            handle_io_finish(lg, dev)
        assert str(e.value) == why.decode()
        assert e.value.status == 3
    finally:
        os.close(r)
        os.close(w)


# --- ENOSPC on a real, full filesystem -------------------------------------

@pytest.fixture
def full_fs(tmp_path):
    """A tiny ext2 filesystem, loop-mounted and filled up, with a sparse
    disk image in it: writing to the image's holes hits ENOSPC."""
    fsimg = tmp_path / "fs.img"
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with open(fsimg, "wb") as f:
        f.truncate(1 << 20)
    if subprocess.run(["mke2fs", "-q", "-F", "-t", "ext2", str(fsimg)],
                      capture_output=True).returncode:
        pytest.skip("mke2fs failed: no small filesystem to fill")
    if os.geteuid() != 0 or subprocess.run(
            ["mount", "-o", "loop", str(fsimg), str(mnt)],
            capture_output=True).returncode:
        pytest.skip("can't loop-mount a filesystem here (not root, or no loop devices)")
    try:
        disk = mnt / "disk.img"
        with open(disk, "wb") as f:
            f.truncate(DISK)                    # all holes
        with open(mnt / "filler", "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 4096)
                    f.flush()
            except OSError as e:
                assert e.errno == errno.ENOSPC
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_enospc_is_ioerr_not_death(full_fs):
    rig = Rig(str(full_fs))
    try:
        blob = rig.ring.alloc(65536, b"\x77" * 65536)
        head, st = rig.request(VIRTIO_BLK_T_OUT, 0, outs=[(blob, 65536)])
        ok = rig.ring.alloc(512)
        head2, st2 = rig.request(VIRTIO_BLK_T_IN, 100, ins=[(ok, 512)])
        rig.kick()
        assert rig.wait_done(2) == [(head, 1), (head2, 513)]
        assert rig.status(st) == VIRTIO_BLK_S_IOERR
        assert rig.status(st2) == VIRTIO_BLK_S_OK       # holes read as zeros
        assert bytes(rig.mem.view[ok:ok + 512]) == bytes(512)
        assert os.path.getsize(full_fs) == DISK
    finally:
        assert rig.close() == 0


def test_worker_sees_the_final_guest_limit(rig, image):
    """Devices set up after the block device (the console comes last) grow
    guest_limit after the worker was forked; a buffer up there is as
    valid to the worker as to the Launcher."""
    _, data = image
    later = rig.devices.new_device("console", 3, -1, None)
    vq = later.add_virtqueue(128, None)
    buf = vq.pfn * PAGE_SIZE + 8192 - 512        # in the new pages
    assert buf + 512 <= rig.mem.guest_limit
    head, st = rig.request(VIRTIO_BLK_T_IN, 1, ins=[(buf, 512)])
    rig.kick()
    assert rig.wait_done(1) == [(head, 513)]
    assert bytes(rig.mem.view[buf:buf + 512]) == data[512:1024]


# --- property: random requests straight into service_io -----------------

from hypothesis import HealthCheck, given, settings      # noqa: E402
from hypothesis import strategies as st                   # noqa: E402

from devices.abi import vring_size                          # noqa: E402
from devices.block import DONE, FILLED, USED, VblkInfo, service_io  # noqa: E402
from devices.virtqueue import Virtqueue                     # noqa: E402

PROP_DISK = 8192
BLK_DEATHS = ("Bad virtblk cmd ", "Bad iovec size ", "Write past end ",
              "Invalid address ", "Looped descriptor", "Desc next is ",
              "Descriptor has out after in")
_blk_outcomes = {}

_seg = st.tuples(st.one_of(st.just(16), st.just(1), st.integers(0, 1024)),
                 st.booleans())
_rtype = st.sampled_from([0, 1, 4, 8, 2, 77, 0x80000001, 0x80000000])
_sector = st.one_of(st.integers(0, PROP_DISK // 512 + 2), st.integers(0, (1 << 64) - 1))


@pytest.fixture(scope="module")
def prop_disk(tmp_path_factory):
    p = tmp_path_factory.mktemp("prop") / "d.img"
    p.write_bytes(random.Random(5).randbytes(PROP_DISK))
    return p


@settings(max_examples=400, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow,
                                 HealthCheck.function_scoped_fixture])
@given(segs=st.lists(_seg, min_size=1, max_size=5), rtype=_rtype, sector=_sector,
       wellformed=st.sampled_from([True, True, True, False]),
       datalens=st.lists(st.integers(0, 2048), min_size=0, max_size=3))
def test_property_service_io(prop_disk, segs, rtype, sector, wellformed, datalens):
    """Any request the Guest can build is served (status 0/1/2, one used
    entry) or is one of the C's clean deaths; the image never changes size."""
    if wellformed:
        # What a driver sends: header, data the right way round, status.
        datadir = rtype & 0xFF == 1
        segs = [(16, False)] + [(n, not datadir) for n in datalens] + [(1, True)]
    data = prop_disk.read_bytes()
    mem = GuestMemory(1 << 20)
    pfn = mem.get_pages(2) // PAGE_SIZE
    vq = Virtqueue(mem, 8, 1, pfn, None)
    ring = GuestRing(mem, vq)
    fd = os.open(prop_disk, os.O_RDWR)
    done_r, done_w = os.pipe()
    try:
        vblk = VblkInfo(fd, PROP_DISK, b"pylguest-vda", False)
        bufs = []
        for k, (length, writable) in enumerate(segs):
            addr = ring.alloc(max(length, 1), bytes(max(length, 1)))
            if k == 0 and length >= 16:
                struct.pack_into("<IIQ", mem.view, addr, rtype, 0, sector)
            bufs.append((addr, length, writable))
        outs = [(a, l) for a, l, w in bufs if not w]
        ins = [(a, l) for a, l, w in bufs if w]
        # Keep the Guest's order, out-after-in included.
        head = ring.next_free
        for k, (a, l, w) in enumerate(bufs):
            last = k == len(bufs) - 1
            ring.set_desc(k, a, l, (2 if w else 0) | (0 if last else 1), k + 1)
        ring.offer(head)
        try:
            assert service_io(vq, vblk, done_w) is True
        except LauncherError as e:
            kind = [m for m in BLK_DEATHS if str(e).startswith(m)]
            assert kind, str(e)
            _blk_outcomes[kind[0]] = _blk_outcomes.get(kind[0], 0) + 1
        else:
            # The worker leaves the used ring to the Launcher: it says what
            # it filled, then which request is done.
            assert ring.get_used() == []
            records = list(DONE.iter_unpack(os.read(done_r, 65536)))
            assert [r[0] for r in records] == [FILLED] * (len(records) - 1) + [USED]
            kind, uid, ulen = records[-1]
            assert uid == head
            status = mem.view[bufs[-1][0]]
            assert status in (VIRTIO_BLK_S_OK, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_UNSUPP)
            _blk_outcomes["status%d" % status] = _blk_outcomes.get("status%d" % status, 0) + 1
        assert os.path.getsize(prop_disk) == PROP_DISK
    finally:
        os.close(fd)
        os.close(done_r)
        os.close(done_w)
        prop_disk.write_bytes(data)


def test_property_service_io_outcomes(prop_disk):
    """Every kind of outcome came up in the property run above."""
    if not _blk_outcomes:
        test_property_service_io(prop_disk)
    print("service_io outcomes:", _blk_outcomes)
    for want in ("status0", "status1", "status2", "Bad virtblk cmd ",
                 "Bad iovec size ", "Write past end ", "Descriptor has out after in"):
        assert want in _blk_outcomes, _blk_outcomes


def test_reset_with_requests_in_flight(rig, image):
    """A reset right after a kick: the worker finishes what it took, acks,
    and only then is the ring cleared; nothing is lost or half-done."""
    path, data = image
    blob = random.Random(4).randbytes(512)
    for k in range(40):
        buf = rig.ring.alloc(512, blob)
        rig.request(VIRTIO_BLK_T_OUT, 100 + k, outs=[(buf, 512)])
    rig.kick()
    rig.mem.view[rig.dev.desc_addr + 4] = 0
    rig.devices.handle_output(rig.lg, rig.dev.desc_addr)
    # Every write the worker reported is whole; the ring is clean.
    disk = path.read_bytes()
    for k in range(40):
        sec = disk[(100 + k) * 512:(101 + k) * 512]
        assert sec in (blob, data[(100 + k) * 512:(101 + k) * 512])
    assert rig.ring.used_idx() == 0 and rig.ring.avail_idx() == 0
    # And the device works again from index 0.
    ring = GuestRing(rig.mem, rig.vq)
    ring.bump = 0x80000
    rig.ring = ring
    buf = ring.alloc(512)
    head, st = rig.request(VIRTIO_BLK_T_IN, 100, ins=[(buf, 512)])
    rig.kick()
    assert rig.wait_done(1) == [(head, 513)]
    assert bytes(rig.mem.view[buf:buf + 512]) == path.read_bytes()[100 * 512:101 * 512]


@pytest.mark.parametrize("batch_secs,writes", [(60.0, 2), (0.0, 20)])
def test_done_pipe_writes_per_pass(image, tmp_path, monkeypatch, batch_secs, writes):
    """The first completion of a pass at once, the rest in one write when
    the ring runs dry (as 3.16 sent one interrupt then); a completion that
    has waited BATCH_SECS goes at once (0: every request on its own)."""
    from waker.stats import Stats
    import devices.block as block
    monkeypatch.setattr(block, "STATS", Stats(str(tmp_path / "stats")))
    monkeypatch.setattr(block, "BATCH_SECS", batch_secs)
    rig = Rig(str(image[0]))
    try:
        for k in range(20):
            rig.request(VIRTIO_BLK_T_IN, k, ins=[(rig.ring.alloc(512), 512)])
        rig.kick()
        assert len(rig.wait_done(20)) == 20
        counts = block.STATS.read()
        assert counts["blk_requests"] == 20
        assert counts["blk_done_writes"] == writes
        assert counts["blk_done_seen"] == 20
        assert counts["blk_irqs"] == len(rig.lg.irqs())
        # The pass is over: the Guest may kick again (the worker says so
        # just after its last records).
        flags = (rig.vq.used_addr + USED_OFF_FLAGS) >> 1
        deadline = time.monotonic() + 10
        while rig.mem.view16[flags] and time.monotonic() < deadline:
            time.sleep(0.001)
        assert rig.mem.view16[flags] == 0
    finally:
        assert rig.close() == 0


def test_request_added_without_a_kick_is_served(image, monkeypatch):
    """A Guest that saw VRING_USED_F_NO_NOTIFY just as the worker went idle
    doesn't kick: the worker's look after IDLE_RECHECK still finds it.
    (A long IDLE_RECHECK here, so a busy machine can't make us late.)"""
    import devices.block as block
    monkeypatch.setattr(block, "IDLE_RECHECK", 1.0)
    path, data = image
    rig = Rig(str(path))
    buf = rig.ring.alloc(512)
    rig.request(VIRTIO_BLK_T_IN, 3, ins=[(buf, 512)])
    rig.kick()
    rig.wait_done(1)
    buf2 = rig.ring.alloc(512)
    head, st = rig.request(VIRTIO_BLK_T_IN, 5, ins=[(buf2, 512)])
    assert rig.wait_done(1) == [(head, 513)]          # no kick
    assert bytes(rig.mem.view[buf2:buf2 + 512]) == data[5 * 512:6 * 512]
    assert rig.close() == 0


def test_used_ring_waits_for_the_launcher(rig):
    """The worker never puts a request in the used ring itself: the Guest
    sees it complete only after the Launcher has read its done records
    (and dropped translations of what it filled)."""
    buf = rig.ring.alloc(4096)
    head, st = rig.request(VIRTIO_BLK_T_IN, 0, ins=[(buf, 4096)])
    rig.kick()
    r, _, _ = select.select([rig.dev.fd], [], [], 10)
    assert r
    time.sleep(0.05)
    assert rig.ring.get_used() == []
    assert rig.lg.dropped == []
    assert rig.wait_done(1) == [(head, 4097)]
    assert (buf, 4096) in rig.lg.dropped


def test_neighbouring_reads_one_run_in_ring_order(rig, image):
    """Reads of neighbouring sectors are served together (ReadRun), each
    with its own data and status; a write between them splits the run, so
    the read after it sees what was written; a read running off the end of
    the disk is an error alone, its neighbours are not hurt."""
    path, data = image
    reads = []
    for k in range(6):                              # sectors 8..55, 4 KiB each
        buf = rig.ring.alloc(4096)
        reads.append((buf,) + rig.request(VIRTIO_BLK_T_IN, 8 + 8 * k, ins=[(buf, 4096)]))
    blob = random.Random(8).randbytes(4096)
    wbuf = rig.ring.alloc(4096, blob)
    rig.request(VIRTIO_BLK_T_OUT, 16, outs=[(wbuf, 4096)])
    again = rig.ring.alloc(4096)
    _, again_st = rig.request(VIRTIO_BLK_T_IN, 16, ins=[(again, 4096)])
    last = DISK // 512 - 4                          # 2 KiB left on the disk
    near = rig.ring.alloc(2048)
    _, near_st = rig.request(VIRTIO_BLK_T_IN, last - 4, ins=[(near, 2048)])
    over = rig.ring.alloc(4096)
    _, over_st = rig.request(VIRTIO_BLK_T_IN, last, ins=[(over, 4096)])
    rig.kick()
    got = rig.wait_done(10)
    assert [h for h, _ in got] == sorted(h for h, _ in got)    # ring order
    for k, (buf, head, st) in enumerate(reads):
        off = (8 + 8 * k) * 512
        assert rig.status(st) == VIRTIO_BLK_S_OK
        assert bytes(rig.mem.view[buf:buf + 4096]) == data[off:off + 4096]
    assert rig.status(again_st) == VIRTIO_BLK_S_OK
    assert bytes(rig.mem.view[again:again + 4096]) == blob
    assert rig.status(near_st) == VIRTIO_BLK_S_OK
    assert bytes(rig.mem.view[near:near + 2048]) == data[(last - 4) * 512:(last - 4) * 512 + 2048]
    assert rig.status(over_st) == VIRTIO_BLK_S_IOERR
