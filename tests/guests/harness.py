"""Build and drive the tiny assembly test Guests against the Host directly.

A scenario file (tests/guests/*.S) includes lib.S and provides scen_table.  We assemble
it with gcc -m32 and link it at 0x100000 (ld -m elf_i386), copy the flat image into a
fresh MAP_SHARED mapping, poke the scenario number and parameters, and hand the
mapping to LguestDev exactly as the Launcher does.
"""
import ctypes
import errno
import functools
import mmap
import os
import struct
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from host import GuestDied, LguestDev, WakerDied          # noqa: E402
from host.abi import LHREQ_BREAK, LHREQ_INITIALIZE, LHREQ_IRQ  # noqa: E402

LOAD = 0x100000
MODE, PARAM0, LOGCOUNT, LOGBASE = 0x7000, 0x7004, 0x8000, 0x8040
LOG_FIELDS = ("vec", "err", "eip", "cs", "eflags", "uesp", "uss", "irq_enabled", "cr2",
              "irq_pending")


@functools.lru_cache(maxsize=None)
def build(name):
    """Assemble tests/guests/<name>.S; returns (flat image bytes, {symbol: address})."""
    with tempfile.TemporaryDirectory() as d:
        obj, elf, binf = (os.path.join(d, n) for n in ("g.o", "g.elf", "g.bin"))
        subprocess.run(["gcc", "-m32", "-c", "-I", str(HERE), str(HERE / (name + ".S")),
                        "-o", obj], check=True)
        subprocess.run(["ld", "-m", "elf_i386", "-Ttext=%#x" % LOAD, "-o", elf, obj],
                       check=True)
        subprocess.run(["objcopy", "-O", "binary", elf, binf], check=True)
        syms = {}
        for line in subprocess.run(["nm", elf], check=True, capture_output=True,
                                   text=True).stdout.splitlines():
            parts = line.split()
            if len(parts) == 3:
                syms[parts[2]] = int(parts[0], 16)
        return Path(binf).read_bytes(), syms


class TinyGuest:
    """One tiny Guest on a fresh Host.  .mem is its memory (bytes-like, index = phys)."""

    def __init__(self, name, mode, params=(), mem_mb=16, start=None):
        image, self.syms = build(name)
        self.size = mem_mb << 20
        self._map = mmap.mmap(-1, self.size, mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
        self.mem = memoryview(self._map)
        self._anchor = ctypes.c_char.from_buffer(self._map)
        self.base = ctypes.addressof(self._anchor)
        self.mem[LOAD:LOAD + len(image)] = image
        self.poke(MODE, mode)
        for i, p in enumerate(params):
            self.poke(PARAM0 + 4 * i, p)
        self.lg = LguestDev()
        self.lg.write((LHREQ_INITIALIZE, self.base, self.size // 4096,
                       LOAD if start is None else start))
        self.breaker = None

    def sym(self, name):
        return self.syms[name]

    def peek(self, addr):
        return struct.unpack_from("<I", self.mem, addr)[0]

    def poke(self, addr, val):
        struct.pack_into("<I", self.mem, addr, val & 0xFFFFFFFF)

    def log(self):
        n = self.peek(LOGCOUNT)
        out = []
        for i in range(n):
            vals = struct.unpack_from("<10I", self.mem, LOGBASE + 48 * i)
            out.append(dict(zip(LOG_FIELDS, vals)))
        return out

    def read(self):
        return self.lg.read()

    def run(self, timeout=10.0):
        """read() until the Guest dies; returns (notify values, GuestDied).  A Guest
        still running after `timeout` seconds is stopped with a BREAK and fails."""
        notes = []
        dog = self._watchdog(timeout)
        try:
            while True:
                try:
                    notes.append(self.lg.read())
                except GuestDied as e:
                    return notes, e
                except BlockingIOError:
                    raise AssertionError("Guest still running after %ss; notifies %r, log %r"
                                         % (timeout, notes, self.log()))
        finally:
            dog.cancel()

    def _watchdog(self, timeout):
        if self.breaker is None:
            self.breaker = self.lg.breaker()
        brk = self.breaker
        t = threading.Timer(timeout, lambda: brk.write((LHREQ_BREAK, 1)))
        t.daemon = True
        t.start()
        return t

    def close(self):
        self.lg.write((LHREQ_BREAK, 0)) if self.lg.guest is not None else None
        self.lg.close()


def guest_fixture(scenarios):
    """A pytest fixture giving make(mode, params=()) -> TinyGuest for one scenario
    file; every Guest made is closed after the test."""
    import pytest

    @pytest.fixture
    def guest():
        made = []

        def make(mode, params=()):
            g = TinyGuest(scenarios, mode, params)
            made.append(g)
            return g
        yield make
        for g in made:
            g.close()
    return guest
