"""Virtqueues: the Launcher's half of a vring.

This is the one place that parses descriptor chains.  The Launcher uses it
for the console and network; the block I/O worker (a separate process that
sees the same shared Guest memory) uses it too, on its own copy of the
Virtqueue object.

A vring lives in Guest memory and the Guest changes it under our feet, so
every ring field is read fresh, and each field we decide on is read exactly
once (a descriptor is unpacked whole, so its address and length can't change
between check and use).

The indices are the fields that really are shared while both sides run: the
block worker fills the used ring while the Guest runs, and reads avail->idx
while the Guest may be writing it.  Those go through GuestMemory's view16 /
view32, whose item stores and loads are single aligned accesses.  Never
struct.pack_into for them: it zeroes the field first and then writes it a
byte at a time, so the other side can read an index of 0, or half of one
(and unpack_from reads a byte at a time, so it can see half of the Guest's).
"""

from .abi import (AVAIL_OFF_FLAGS, AVAIL_OFF_IDX, AVAIL_OFF_RING, PAGE_SHIFT,
                  USED_OFF_FLAGS, USED_OFF_IDX, USED_OFF_RING,
                  VRING_AVAIL_F_NO_INTERRUPT, VRING_DESC, VRING_DESC_F_NEXT,
                  VRING_DESC_F_WRITE, VRING_DESC_SIZE, VRING_USED_F_NO_NOTIFY,
                  vring_offsets)
from .errors import err, errx

try:
    from host.abi import LHREQ_IRQ
except ImportError:            # host/ not written yet: the Linux 3.16 value
    LHREQ_IRQ = 2


class Virtqueue:
    """One virtqueue; mirrors struct virtqueue in lguest.c.

    mem: the GuestMemory; num: ring entries (power of 2); irq: the
    interrupt the Guest gets for it; pfn: Guest page frame of the vring
    (which must already lie inside mem); handle_output(lg, vq) or None: what
    a kick (NOTIFY pfn << 12) runs; dev: the owning Device.

    last_avail_idx is our private count of avail entries consumed (u16
    arithmetic); last_addrs is [(guest_phys_addr, len), ...] of the chain
    the latest get_vq_desc() returned, in iov order."""

    def __init__(self, mem, num, irq, pfn, handle_output=None, dev=None):
        self.mem = mem
        self.num = num
        self.irq = irq
        self.pfn = pfn
        self.handle_output = handle_output
        self.dev = dev
        self.last_avail_idx = 0
        self.last_addrs = []
        base = pfn << PAGE_SHIFT
        desc, avail, used = vring_offsets(num)
        self.desc_addr = base + desc
        self.avail_addr = base + avail
        self.used_addr = base + used
        self._view = mem.view
        # used->idx must move in ONE 16-bit store, and avail->idx be read
        # in one load (see the top of this file): u16 / u32 views, and the
        # indices in them of the shared fields.
        self._u16 = mem.view16
        self._u32 = mem.view32
        self._avail_flags = (self.avail_addr + AVAIL_OFF_FLAGS) >> 1
        self._avail_idx = (self.avail_addr + AVAIL_OFF_IDX) >> 1
        self._avail_ring = (self.avail_addr + AVAIL_OFF_RING) >> 1
        self._used_flags = (self.used_addr + USED_OFF_FLAGS) >> 1
        self._used_idx = (self.used_addr + USED_OFF_IDX) >> 1
        self._used_ring = (self.used_addr + USED_OFF_RING) >> 2
        # Without a handler there is no point in the Guest kicking us: as
        # add_virtqueue() in lguest.c, say so in the used ring's flags.
        if handle_output is None:
            self._u16[self._used_flags] = VRING_USED_F_NO_NOTIFY

    # -- reading the avail ring --------------------------------------------
    def avail_flags(self):
        return self._u16[self._avail_flags]

    def avail_idx(self):
        return self._u16[self._avail_idx]

    def used_idx(self):
        return self._u16[self._used_idx]

    def get_vq_desc(self):
        """Take the next available buffer.  Returns None if the Guest has
        offered nothing new, else (head, iov, out_num, in_num): iov is a
        list of memoryviews into Guest memory, the out_num readable
        ("out") buffers first, then in_num writable ("in") ones.

        Mirrors get_vq_desc() and next_desc() in lguest.c, with every check
        and its message (LauncherError): "Guest moved used index from %u to
        %u", "Guest says index %u is available", "Desc next is %u",
        "Looped descriptor", "Descriptor has out after in", and "Invalid
        address %#x" from check_pointer()."""
        num = self.num
        view = self._view
        # One read of avail->idx: the C read it twice, and a Guest racing
        # us could make the two disagree.
        avail_idx = self._u16[self._avail_idx]
        last = self.last_avail_idx

        # More than num outstanding means the Guest is making numbers up.
        if (avail_idx - last) & 0xFFFF > num:
            errx("Guest moved used index from %u to %u" % (last, avail_idx))
        if avail_idx == last:
            return None

        head = self._u16[self._avail_ring + last % num]
        self.last_avail_idx = (last + 1) & 0xFFFF
        if head >= num:
            errx("Guest says index %u is available" % head)

        iov = []
        addrs = []
        out_num = in_num = 0
        check_pointer = self.mem.check_pointer
        i = head
        while True:
            addr, length, flags, nxt = VRING_DESC.unpack_from(
                view, self.desc_addr + i * VRING_DESC_SIZE)
            iov.append(check_pointer(addr, length))
            addrs.append((addr, length))
            if flags & VRING_DESC_F_WRITE:
                in_num += 1
            else:
                # Readable buffers all come before writable ones.
                if in_num:
                    errx("Descriptor has out after in")
                out_num += 1
            # A chain longer than the table can only be a loop.
            if out_num + in_num > num:
                errx("Looped descriptor")
            # next_desc(): the end, or a next that must stay in the table.
            if not flags & VRING_DESC_F_NEXT:
                break
            if nxt >= num:
                errx("Desc next is %u" % nxt)
            i = nxt

        self.last_addrs = addrs
        return head, iov, out_num, in_num

    def suppress_notify(self, on):
        """Tell the Guest not to kick us (on) or to kick again (off): the
        VRING_USED_F_NO_NOTIFY flag of the used ring, one aligned store.
        The 3.16 Launcher's device threads kept it set while awake
        (wait_for_vq_desc()); the Guest reads it after adding buffers."""
        self._u16[self._used_flags] = VRING_USED_F_NO_NOTIFY if on else 0

    def add_used(self, head, length):
        """Give buffer head back to the Guest, length bytes written into it;
        mirrors add_used() in lguest.c.  The element is stored before the
        index moves, so the Guest never sees a half-written entry (x86
        keeps stores in order; Python gives us no barrier to write)."""
        u16 = self._u16
        idx = u16[self._used_idx]
        elem = self._used_ring + 2 * (idx % self.num)     # in u32s
        self._u32[elem] = head
        self._u32[elem + 1] = length & 0xFFFFFFFF
        u16[self._used_idx] = (idx + 1) & 0xFFFF

    def trigger_irq(self, lg):
        """Interrupt the Guest for this queue, unless it set
        VRING_AVAIL_F_NO_INTERRUPT; mirrors trigger_irq() in lguest.c.
        lg is the /dev/lguest object (its write() takes (LHREQ_IRQ, irq))."""
        if self.avail_flags() & VRING_AVAIL_F_NO_INTERRUPT:
            return
        try:
            lg.write((LHREQ_IRQ, self.irq))
        except (OSError, ValueError):
            err("Triggering irq %i" % self.irq)

    def add_used_and_trigger(self, lg, head, length):
        """add_used() then trigger_irq(); as add_used_and_trigger() in C."""
        self.add_used(head, length)
        self.trigger_irq(lg)

    def reset(self):
        """Forget what we consumed: the Guest reset the device and will lay
        the ring out afresh (the 3.16 Launcher's reset_device())."""
        self.last_avail_idx = 0
        self.last_addrs = []
