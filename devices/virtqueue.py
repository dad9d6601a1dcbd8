"""Virtqueues: the Launcher's half of a vring.

This is the one place that parses descriptor chains.  The Launcher uses it
for the console and network; the block I/O worker (a separate process that
sees the same shared Guest memory) uses it too, on its own copy of the
Virtqueue object.

A vring lives in Guest memory and the Guest changes it under our feet, so
every ring field is read fresh from the memoryview with struct.unpack_from,
and each field we decide on is read exactly once (a descriptor is unpacked
whole, so its address and length can't change between check and use).
"""

from .abi import (AVAIL_OFF_FLAGS, AVAIL_OFF_IDX, AVAIL_OFF_RING, PAGE_SHIFT,
                  U16, USED_OFF_FLAGS, USED_OFF_IDX, USED_OFF_RING,
                  VRING_AVAIL_F_NO_INTERRUPT, VRING_DESC, VRING_DESC_F_NEXT,
                  VRING_DESC_F_WRITE, VRING_DESC_SIZE, VRING_USED_ELEM,
                  VRING_USED_F_NO_NOTIFY, vring_offsets)
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
        # used->idx must move in ONE 16-bit store: struct.pack_into zero-fills its
        # target before writing, and a Guest reading concurrently (the block worker
        # is another process) would see the index drop to 0 for an instant.
        self._u16 = mem.view.cast("H")
        # Without a handler there is no point in the Guest kicking us: as
        # add_virtqueue() in lguest.c, say so in the used ring's flags.
        if handle_output is None:
            U16.pack_into(self._view, self.used_addr + USED_OFF_FLAGS,
                          VRING_USED_F_NO_NOTIFY)

    # -- reading the avail ring --------------------------------------------
    def avail_flags(self):
        return U16.unpack_from(self._view, self.avail_addr + AVAIL_OFF_FLAGS)[0]

    def avail_idx(self):
        return U16.unpack_from(self._view, self.avail_addr + AVAIL_OFF_IDX)[0]

    def used_idx(self):
        return U16.unpack_from(self._view, self.used_addr + USED_OFF_IDX)[0]

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
        avail_idx = U16.unpack_from(view, self.avail_addr + AVAIL_OFF_IDX)[0]
        last = self.last_avail_idx

        # More than num outstanding means the Guest is making numbers up.
        if (avail_idx - last) & 0xFFFF > num:
            errx("Guest moved used index from %u to %u" % (last, avail_idx))
        if avail_idx == last:
            return None

        head = U16.unpack_from(
            view, self.avail_addr + AVAIL_OFF_RING + 2 * (last % num))[0]
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

    def add_used(self, head, length):
        """Give buffer head back to the Guest, length bytes written into it;
        mirrors add_used() in lguest.c.  The element is stored before the
        index moves, so the Guest never sees a half-written entry (x86
        keeps stores in order; Python gives us no barrier to write)."""
        idx = U16.unpack_from(self._view, self.used_addr + USED_OFF_IDX)[0]
        VRING_USED_ELEM.pack_into(
            self._view,
            self.used_addr + USED_OFF_RING + VRING_USED_ELEM.size * (idx % self.num),
            head, length & 0xFFFFFFFF)
        self._u16[(self.used_addr + USED_OFF_IDX) // 2] = (idx + 1) & 0xFFFF

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
