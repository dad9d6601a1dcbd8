"""The 3.16 /dev/lguest protocol (host/lguest_user.py LguestFile), driven in bytes as
the C Launcher of Linux 3.16 drove the kernel, with the tiny assembly Guests
(tests/guests/): each answer of read() and write() in lguest_user.c (3.16)."""
import ctypes
import errno
import mmap
import os
import struct
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "guests"))
from harness import LOAD, LOGCOUNT, MODE, build  # noqa: E402

from host.lguest_user import LguestFile  # noqa: E402

INIT, IRQ, BREAK, EVENTFD = 0, 2, 3, 4
ME = os.getpid()


WORD = struct.calcsize("L")                     # our own sizeof(long): a 64-bit "Launcher"


def words(*w):
    return struct.pack("<%dQ" % len(w), *w) if WORD == 8 else struct.pack("<%dI" % len(w), *w)


class File316:
    """A tiny Guest behind an LguestFile, in this process (Launcher memory = ours)."""

    def __init__(self, scenarios, mode, size=16 << 20):
        image, _ = build(scenarios)
        self.map = mmap.mmap(-1, size, mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
        self._anchor = ctypes.c_char.from_buffer(self.map)
        self.base = ctypes.addressof(self._anchor)
        self.map[LOAD:LOAD + len(image)] = image
        struct.pack_into("<I", self.map, MODE, mode)
        self.f = LguestFile(WORD, lambda addr, length: addr)
        self.size = size

    def init(self):
        return self.f.write(words(INIT, self.base, self.size // 4096, LOAD), 0, ME)

    def read(self, size=WORD, offset=0, caller=ME):
        """The NOTIFY address (int), the reason (bytes), or -errno."""
        r = self.f.read(size, offset, caller)
        if isinstance(r, bytes) and size == WORD and len(r) == WORD:
            return int.from_bytes(r, "little")
        return r

    def close(self):
        self.f.close()


@pytest.fixture
def make():
    made = []

    def mk(scenarios, mode):
        g = File316(scenarios, mode)
        made.append(g)
        return g
    yield mk
    for g in made:
        g.close()


def test_everything_but_initialize_wants_initialize_first(make):
    g = make("hypercalls", 3)
    assert g.f.write(words(IRQ, 1), 0, ME) == -errno.EINVAL
    assert g.read() == -errno.EINVAL
    assert g.init() == 3 * WORD                 # sizeof(args): three words
    assert g.init() == -errno.EBUSY


def test_bad_requests(make):
    g = make("hypercalls", 3)
    g.init()
    assert g.f.write(words(IRQ, 32), 0, ME) == -errno.EINVAL
    assert g.f.write(words(IRQ), 0, ME) == -errno.EFAULT
    assert g.f.write(words(BREAK, 1), 0, ME) == -errno.EINVAL    # gone by 3.16
    assert g.f.write(words(IRQ, 1), 1, ME) == -errno.EINVAL      # cpu 1: no such cpu
    assert g.read(offset=1) == -errno.EINVAL
    assert g.read(caller=ME + 1) == -errno.EPERM                 # not the Guest's task


def test_eventfd_must_be_an_eventfd_at_a_real_address(make):
    g = make("hypercalls", 3)
    g.init()
    r, w = os.pipe()
    assert g.f.write(words(EVENTFD, 0x1000, 0), 0, ME, fd=r) == -errno.EINVAL
    efd = os.eventfd(0)
    assert g.f.write(words(EVENTFD, 0, 0), 0, ME, fd=efd) == -errno.EINVAL
    assert g.f.write(words(EVENTFD, 0x1000, 0), 0, ME) == -errno.EBADF
    os.close(w)
    for fd in (r, efd):                         # the file took (and closed) both
        with pytest.raises(OSError):
            os.fstat(fd)


def test_notify_of_an_attached_address_signals_its_eventfd(make):
    g = make("hypercalls", 5)                   # NOTIFY 0x1234, then 0x5678, ...
    g.init()
    efd = os.eventfd(0)
    mine = os.dup(efd)
    assert g.f.write(words(EVENTFD, 0x1234, 99), 0, ME, fd=efd) == 0
    assert g.read() == 0x5678                   # 0x1234 never reached read()
    assert os.eventfd_read(mine) == 1
    os.close(mine)


def test_async_notifies_to_eventfds_then_the_sync_hypercall_behind_them(make):
    g = make("hypercalls", 6)                   # async NOTIFY A1, A2, then sync NOTIFY A3
    g.init()
    fds = {}
    for addr in (0xA1, 0xA2):
        efd = os.eventfd(0)
        fds[addr] = os.dup(efd)
        assert g.f.write(words(EVENTFD, addr, 0), 0, ME, fd=efd) == 0
    assert g.read() == 0xA3
    assert g.read() == 0xFFFF                   # both ring slots were run and freed
    assert [os.eventfd_read(fds[a]) for a in (0xA1, 0xA2)] == [1, 1]


def test_death_is_enoent_then_the_reason(make):
    g = make("hypercalls", 3)
    g.init()
    assert g.read() == -errno.ENOENT
    assert g.read(1024) == b"CRASH: Power down\0"
    assert g.read(5) == b"CRASH"                # as much as the buffer holds
    assert g.f.write(words(IRQ, 1), 0, ME) == -errno.ENOENT


def test_restart_is_erestart(make):
    g = make("hypercalls", 4)
    g.init()
    assert g.read() == -errno.ERESTART
    assert g.read(1024) == -errno.ERESTART


def test_irq_from_another_thread_wakes_a_halted_guest(make):
    g = make("irqs", 5)                         # HALT with no clock: only an IRQ wakes it
    g.init()
    t = threading.Timer(0.2, lambda: g.f.write(words(IRQ, 1), 0, ME + 1))
    t.start()
    t0 = time.monotonic()
    assert g.read() == 2                        # LOGCOUNT + 1: the IRQ was taken
    assert time.monotonic() - t0 >= 0.19
    t.join()


def test_a_reader_that_went_away_gets_the_guest_stopped(make):
    g = make("irqs", 7)                         # NOTIFY 1, then spin forever
    g.init()
    assert g.read() == 1
    threading.Timer(0.2, g.f.signal_pending).start()
    assert g.read() == -errno.EINTR


def test_a_foreign_write_drops_the_code_translated_there(make):
    """Code another task writes into Guest memory (the C Launcher's block thread:
    the shim's note of a file read) runs as written once the file hears of it."""
    g = make("smc", 0)                          # call 0x300000, NOTIFY what it returned
    function = lambda imm: b"\xb8" + struct.pack("<I", imm) + b"\xc3"   # mov imm, %eax; ret
    g.map[0x300000:0x300006] = function(0x111)
    g.init()
    assert g.read() == 0x111
    g.map[0x300000:0x300006] = function(0x222)
    assert g.read() == 0x111                    # unicorn can't tell by itself
    g.f.foreign_write(g.base + 0x300000, 6)     # Launcher addresses, as the shim sends
    assert g.read() == 0x222
    g.f.foreign_write(g.base - 4096, 100)       # not Guest memory: ignored
    g.f.foreign_write(g.base + g.size, 100)
    assert g.read() == 0x222
