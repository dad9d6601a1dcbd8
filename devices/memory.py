"""Guest "physical" memory: one shared anonymous mapping.

The C Launcher mapped /dev/zero and kept guest_base, so that Guest physical
== Launcher virtual - guest_base.  We keep the same picture: the mapping's
byte at index N *is* Guest-physical address N.  It is MAP_SHARED and made
once, before any fork, so the block I/O worker and the Waker see the very
same pages (the worker reads and writes vrings and buffers in place), and
unicorn gets it through mem_map_ptr at .base.

Layout (DESIGN §3): [0, mem) is RAM; at mem starts the device page, then
vrings as get_pages() hands them out; guest_limit is how far the Guest may
reach (it grows with get_pages), guest_max how far it ever could.
"""

import ctypes
import mmap
import struct
import sys

from .abi import DEVICE_PAGES, PAGE_SIZE
from .errors import c_hex, errx

_U64 = struct.Struct("<Q")

# view16/view32 are native-order; the vring is little-endian.
if sys.byteorder != "little":
    raise ImportError("pylguest needs a little-endian host")


class GuestMemory:
    """The Guest's memory.  mem_bytes is the RAM size in bytes (page
    aligned); the mapping holds DEVICE_PAGES pages more for devices.

    Attributes: base (int, address of the mapping in this process), view
    (memoryview of the whole mapping, index == Guest-physical address),
    view16 / view32 (the same as u16 / u32 arrays: index == address // 2
    or // 4; whole aligned stores and loads, for shared ring fields),
    size (bytes mapped), guest_limit, guest_max (as the C globals)."""

    def __init__(self, mem_bytes):
        if mem_bytes <= 0 or mem_bytes % PAGE_SIZE:
            raise ValueError("guest memory must be a positive number of pages")
        self.size = mem_bytes + DEVICE_PAGES * PAGE_SIZE
        # Anonymous and shared: zeroed pages that survive fork() as the
        # *same* pages, which is the whole point (the C used MAP_PRIVATE
        # /dev/zero plus a CLONE_VM thread; we have processes instead).
        self._mmap = mmap.mmap(-1, self.size,
                               flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS,
                               prot=mmap.PROT_READ | mmap.PROT_WRITE)
        self.view = memoryview(self._mmap)
        # The same bytes as arrays of u16 and u32, for the ring indices
        # and used elements that another process reads while we write
        # them.  An item store through a cast view is one aligned machine
        # store, which the other side can never see half done;
        # struct.pack_into is not (it clears the field, then writes it a
        # byte at a time).  Index = address // 2 or // 4.
        self.view16 = self.view.cast("H")
        self.view32 = self.view.cast("I")
        self._anchor = ctypes.c_char.from_buffer(self._mmap)
        self.base = ctypes.addressof(self._anchor)
        # guest_limit lives in a shared cell of its own: the block worker is
        # forked while devices are still being added, and must see the
        # final limit (the console's vrings come after it), not the limit
        # at the moment it was born.
        self._limit_cell = mmap.mmap(-1, 8, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
        self.guest_limit = mem_bytes
        self.guest_max = self.size

    @property
    def guest_limit(self):
        """Guest-physical end of what the Guest may touch (bytes)."""
        return _U64.unpack_from(self._limit_cell, 0)[0]

    @guest_limit.setter
    def guest_limit(self, value):
        _U64.pack_into(self._limit_cell, 0, value)

    def get_pages(self, num):
        """Hand out num fresh pages above guest_limit and return their
        Guest-physical address; mirrors get_pages() in lguest.c.
        Dies "Not enough memory for devices" past guest_max."""
        addr = self.guest_limit
        if addr + num * PAGE_SIZE > self.guest_max:
            errx("Not enough memory for devices")
        self.guest_limit = addr + num * PAGE_SIZE
        return addr

    def check_pointer(self, addr, size):
        """Return a memoryview of Guest memory [addr, addr+size), dying
        "Invalid address %#x" unless all of it lies below guest_limit;
        mirrors _check_pointer() in lguest.c.

        The C tested addr and addr+size separately because the sum could
        wrap a 32-bit unsigned long; Python ints don't wrap, so one honest
        comparison does.  (The C also refused a buffer *ending* exactly at
        guest_limit, an off-by-one we don't copy: that byte is the Guest's.)
        addr comes from a u64 vring field, so it may be absurdly large."""
        limit = self.guest_limit
        if addr < 0 or size < 0 or addr >= limit or addr + size > limit:
            errx("Invalid address %s" % c_hex(addr))
        return self.view[addr:addr + size]

    def from_guest_phys(self, addr, size=None):
        """A memoryview starting at Guest-physical addr (to the end of the
        mapping, or size bytes), unchecked: for the Launcher's own layout
        work (loading the kernel, boot_params), never for Guest-supplied
        addresses.  Mirrors from_guest_phys() in lguest.c."""
        if size is None:
            return self.view[addr:]
        return self.view[addr:addr + size]

    def read_cstring(self, addr, limit):
        """The bytes at addr up to (not including) a NUL, at most limit
        bytes: strnlen() plus the slice.  addr must be checked already."""
        end = self._mmap.find(b"\0", addr, addr + limit)
        if end < 0:
            end = addr + limit
        return bytes(self.view[addr:end])
