"""The heart of the Host: the Guest's state and run_guest().

Mirrors drivers/lguest/core.c (run_guest, lgread/lgwrite, kill_guest) and lg.h (struct
lguest, struct lg_cpu).  run_guest() is 3.16's loop, step for step:

  1. run the hypercall the Guest asked for       do_hypercalls()
  2. a NOTIFY goes back to the Launcher          return the address
  3. "signals": the helper thread's events       clock -> IRQ 0, BREAK -> EAGAIN,
                                                 Waker gone -> WakerDied
  4. deliver an interrupt it can take now        try_deliver_interrupt()
  5. halted: sleep until woken, go round again
  6. run the Guest once                          x86_core.run_once() -> an Exit
  7. handle the exit                             handle_exit()

Most traps never reach step 7: the hooks in x86_core.py handle them inside emu_start()
and call between_traps(), which does steps 2-5 there, or stops the engine when the loop
must do them itself.
"""

import ctypes
import errno
import os
import struct
import time

import lgtrace

from . import hypercalls, page_tables, segments, x86_core
from . import interrupts_and_traps as it
from .abi import GUEST_PL, IDT_ENTRIES, LGUEST_IRQS, PAGE_SIZE, X86_CR0_TS, X86_CR4_PSE
from .channel import (BREAK, FOREIGN_WRITE, INPUT, IRQS, RECHECK, RECHECK_FIRST, TIMER,
                      WAKER_GONE, Channel)
from .cpu import HOST_CR4, HostPages, make_engine, setup_regs
from .tsc import TscRate
from .x86_core import Exit

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_EVENTFD_ONE = (1).to_bytes(8, "little")    # eventfd_signal(ctx, 1)


class GuestDied(Exception):
    """read() after the Guest died.  .reason is the Host's words ("CRASH: Power down",
    "Bad hypercall 99"...); .poweroff is True for SHUTDOWN "Power down" with
    LGUEST_SHUTDOWN_POWEROFF; .restart for LGUEST_SHUTDOWN_RESTART (-ERESTART in C)."""

    def __init__(self, reason, poweroff=False, restart=False):
        super().__init__(reason)
        self.reason = reason
        self.poweroff = poweroff
        self.restart = restart


class WakerDied(Exception):
    """read() found the Waker's end of the BREAK channel closed: the Waker is gone."""


class Guest:
    """One Guest and its one CPU: struct lguest and struct lg_cpu in one object (every
    Host file reaches both halves, as the C did through cpu->lg, so one name serves).

    Guest memory is the Launcher's mapping at `base`, pfn_limit pages long; Guest-physical
    address N is byte N of self.mem and unicorn physical address N.
    """

    def __init__(self, base, pfn_limit, start):
        # --- struct lguest: the Guest as a whole --------------------------------------
        self.pfn_limit = pfn_limit
        self.mem_limit = pfn_limit * PAGE_SIZE
        self._memobj = (ctypes.c_char * self.mem_limit).from_address(base)
        self.mem = memoryview(self._memobj).cast("B")
        self.lguest_data = None
        self.kernel_address = None
        self.noirq_start = self.noirq_end = 0
        self.syscall_vec = 0x80
        self.stack_pages = 0
        self.known_pgdirs = set()     # the page directories it has used (pgdirs[])
        self.tsc = TscRate()          # starts measuring now; read at LGUEST_INIT
        self.dead = None              # why it died (the first reason given)
        self.poweroff = self.restart = False

        # --- struct lg_cpu: its one CPU ------------------------------------------------
        self.uc, self.ui = make_engine(base, pfn_limit)     # the registers: ui.eip...
        self.host = HostPages(self.uc, pfn_limit)
        self.gdt = self.host.gdt
        self.gdt_changed = False      # C: cpu->changed & CHANGED_GDT
        self.idt = [(0, 0)] * IDT_ENTRIES
        self.ts = 0
        self.esp1 = self.ss1 = 0
        self.linear_pages = True
        self.pae = False              # learnt at the first NEW_PGTABLE (page_tables.py)
        self.pgdir = 0
        self.cr4 = 0
        self.hcall = None             # the hypercall's (eax, ebx, ecx, edx, esi)
        self.next_hcall = 0
        self.pending_notify = 0
        self.eventfds = ()            # ((address, eventfd), ...): LHREQ_EVENTFD (3.16)
        self.halted = False
        self.irqs_pending = 0         # bitmap of LGUEST_IRQS
        self.break_out = False        # LHREQ_BREAK 1, until LHREQ_BREAK 0
        self.input_fds = ()           # LguestDev.wake_on_input(): watched while halted
        self.break_input = False      # the last EAGAIN was for INPUT, with no BREAK
        self.irq_wait_since = None    # when a still-pending interrupt was first not taken

        # --- the helper thread (the hrtimer, break_guest_out) and the engine's exits ---
        self.channel = Channel(self.uc)
        self.events = self.channel.events
        self.exit = None              # why a hook stopped the engine (an Exit)
        self.fault = None             # (access, address) from the memory hook
        self.host_error = None        # an exception raised inside a hook

        segments.setup_default_gdt_entries(self)
        segments.setup_guest_gdt(self)
        setup_regs(self.uc, self.ui, start)
        self.cr4 = HOST_CR4 | X86_CR4_PSE
        x86_core.install_hooks(self)

    # --- Guest memory: lgread/lgwrite and friends ------------------------------------
    def address_ok(self, addr, length):
        """lguest_address_ok(): [addr, addr+length) inside Guest memory, no wrap."""
        return 0 <= addr and addr + length <= self.mem_limit

    def u32_at(self, addr):
        """Read a u32 the Host already knows is inside Guest memory."""
        return _U32.unpack_from(self.mem, addr)[0]

    def read_u32(self, addr):
        """lgread(u32): kills "bad read address %#lx len %u" (returns 0) if out of range."""
        if 0 <= addr and addr + 4 <= self.mem_limit:
            return _U32.unpack_from(self.mem, addr)[0]
        self.kill_guest("bad read address %#x len %u" % (addr & 0xFFFFFFFF, 4))
        return 0

    def write_u32(self, addr, val):
        _U32.pack_into(self.mem, addr, val & 0xFFFFFFFF)

    # The same for the 64-bit entries of PAE page tables (page_tables.py).
    def u64_at(self, addr):
        return _U64.unpack_from(self.mem, addr)[0]

    def read_u64(self, addr):
        """lgread(pgd_t / pmd_t / pte_t) under PAE: kills "bad read address" (returns 0)."""
        if 0 <= addr and addr + 8 <= self.mem_limit:
            return _U64.unpack_from(self.mem, addr)[0]
        self.kill_guest("bad read address %#x len %u" % (addr & 0xFFFFFFFF, 8))
        return 0

    def write_u64(self, addr, val):
        _U64.pack_into(self.mem, addr, val)

    def lgwrite_u32(self, addr, val):
        """lgwrite(u32): kills "bad write address %#lx len %u" if out of range."""
        if 0 <= addr and addr + 4 <= self.mem_limit:
            _U32.pack_into(self.mem, addr, val & 0xFFFFFFFF)
        else:
            self.kill_guest("bad write address %#x len %u" % (addr & 0xFFFFFFFF, 4))

    def lgread(self, addr, length):
        """__lgread(): bytes, or zeroes and a kill if out of range."""
        if self.address_ok(addr, length):
            return bytes(self.mem[addr:addr + length])
        self.kill_guest("bad read address %#x len %u" % (addr & 0xFFFFFFFF, length))
        return bytes(length)

    def send_notify_to_eventfd(self):
        """A NOTIFY of an address the Launcher attached an eventfd to (LHREQ_EVENTFD,
        the 3.16 protocol) signals that eventfd -- the virtqueue's thread wakes -- and
        never reaches the Launcher's read().  Mirrors send_notify_to_eventfd() in
        lguest_user.c: the first entry for the address wins.  Returns True if taken."""
        for addr, fd in self.eventfds:
            if addr == self.pending_notify:
                try:
                    os.write(fd, _EVENTFD_ONE)
                except OSError:
                    pass              # its thread is gone: nobody to tell
                self.pending_notify = 0
                return True
        return False

    def kill_guest(self, reason):
        """Mark the Guest dead; the first reason given wins.  Mirrors kill_guest()."""
        if self.dead is None:
            self.dead = reason

    # --- CPU control registers -------------------------------------------------------
    def tlb_flush(self):
        self.ui.flush_tlb()

    def tlb_flush_page(self, vaddr):
        self.ui.flush_tlb_page(vaddr)

    def set_cr3(self, val):
        self.ui.cr3 = val

    def set_cr4(self, val):
        self.cr4 = val
        self.ui.cr4 = val

    def set_ts(self, ts):
        """LHCALL_TS: the Guest's CR0.TS, which makes its FPU use trap with #NM."""
        if bool(ts) != bool(self.ts):
            cr0 = self.ui.cr0
            self.ui.cr0 = cr0 | X86_CR0_TS if ts else cr0 & ~X86_CR0_TS
        self.ts = ts

    # --- the run loop ----------------------------------------------------------------
    def run_guest(self):
        """Run until something for the Launcher; mirrors run_guest().

        Returns a NOTIFY address; raises BlockingIOError(EAGAIN) for a BREAK, WakerDied,
        or GuestDied.
        """
        while self.dead is None:
            # 1. A hypercall left behind an async NOTIFY runs once the Launcher saw it.
            if self.hcall is not None and not self.pending_notify:
                hypercalls.do_hypercalls(self)
            # 2. A NOTIFY is for the Launcher, unless an eventfd takes it (3.16); then a
            #    hypercall queued behind it runs now.
            if self.pending_notify:
                if not self.send_notify_to_eventfd():
                    return self.pending_notify
                continue
            # 3. "Check for signals": what the helper thread raised.
            ev = self.events.take()
            if lgtrace.on: lgtrace.taken(self, ev)
            if ev & FOREIGN_WRITE:
                # Before any interrupt that follows: the Guest may run what was read in.
                for gpa, length in self.events.take_dirty():
                    self.drop_translations(gpa, length)
            if ev & TIMER:
                it.set_interrupt(self, 0)
            if ev & IRQS:
                self.irqs_pending |= self.events.take_irqs()
            if ev & (BREAK | INPUT):
                # INPUT: what the Waker would have BREAKed us for, seen by a halted
                # sleep first.  The Launcher serves it and clears the BREAK as ever.
                self.break_out = True
                self.break_input = not ev & BREAK     # (says the trace)
            if self.break_out:
                raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
            if ev & WAKER_GONE:
                raise WakerDied("the Waker has gone away")
            # 4. An interrupt the Guest can take now.
            it.deliver_interrupts(self)
            if self.dead is not None:
                break
            # 5. Halted: sleep until an interrupt or an event.
            if self.halted:
                self.sleep()
                continue
            # 6. and 7. Run the Guest, then deal with why it stopped.
            self.handle_exit(x86_core.run_once(self))
        raise GuestDied(self.dead, self.poweroff, self.restart)

    def handle_exit(self, why):
        """Step 7: what each way out of run_once() leaves for the loop to do."""
        if lgtrace.on: lgtrace.stopped(self, why)
        match why:
            case Exit.NOTIFY | Exit.HALT | Exit.EVENT | Exit.DEATH:
                pass                  # the top of the loop takes these (steps 2, 5, 3, end)
            case Exit.MEMORY_FAULT:
                x86_core.memory_death(self)
            case Exit.TRIPLE_FAULT:
                self.kill_guest("unhandled trap 8 at %#x (0): triple fault" % self.ui.eip)
            case Exit.HOST_ERROR:
                e, self.host_error = self.host_error, None
                if not isinstance(e, Exception):
                    raise e           # KeyboardInterrupt, SystemExit: not ours to eat
                self.kill_guest("Host error: %s: %s" % (type(e).__name__, e))

    def between_traps(self):
        """Steps 2-5 of run_guest(), done inside a hook after it handled a trap, so the
        Guest runs on in the same emu_start().  Returns None for that, or the Exit that
        sends the loop to do it: the Launcher must see something, an event needs
        taking, or the Guest halted or died."""
        if self.dead is not None:
            return Exit.DEATH
        if self.pending_notify:                       # 2.
            if not (self.eventfds and self.send_notify_to_eventfd()):
                return Exit.NOTIFY
            if self.hcall is not None:                # queued behind it: step 1
                return Exit.NOTIFY
        if self.events.pending():                     # 3.
            return Exit.EVENT
        if self.irqs_pending:                         # 4.
            it.deliver_interrupts(self)
            if self.dead is not None:
                return Exit.DEATH
            if self.irqs_pending:
                self.recheck_interrupts()
            else:
                self.irq_wait_since = None
        if self.halted:                               # 5.
            return Exit.HALT
        if self.gdt_changed:
            x86_core.reload_segments(self)
            if self.dead is not None:
                return Exit.DEATH
        return None

    def recheck_interrupts(self):
        """An interrupt is still pending after a try (interrupts off, its line blocked,
        the iret window, or one delivered and another waiting): have the helper thread
        stop the Guest soon to try again.

        Nothing else may tell us in time.  3.16's lg_irq_enable() ("sti") tests
        irq_pending against $0, never true, so only lg_restore_fl() asks for a pending
        interrupt with SEND_INTERRUPTS; an iret or an unmasked line asks nothing.  The
        real Host noticed at its next exit or host timer tick.  We look again after
        RECHECK_FIRST, and back off to RECHECK while the interrupt keeps waiting (a
        masked line may stay masked a long time)."""
        now = time.monotonic()
        since = self.irq_wait_since
        if since is None:
            since = self.irq_wait_since = now
        self.channel.request_recheck(min(RECHECK, max(RECHECK_FIRST, now - since)))

    def sleep(self):
        """HALT: sleep until an interrupt we can deliver or an event (the clock, BREAK,
        the Waker gone, the Launcher's input) arrives.  No busy loop: we sleep in
        select() on the helper thread's wake-up pipe, the Waker's BREAK channel itself
        and the Launcher's input fds, until the clock event's deadline
        (Channel.wait_halted)."""
        ev = self.events
        ev.sleeping = True                            # set_current_state(INTERRUPTIBLE)
        try:
            if not ev.pending() and it.interrupt_pending(self)[0] >= LGUEST_IRQS:
                dl = ev.deadline
                timeout = None if dl is None else max(0.0, dl - time.monotonic())
                self.channel.wait_halted(timeout, self.input_fds)    # schedule()
        finally:
            ev.sleeping = False
        # The Guest's clock is lguest_data.time: freshen it after a sleep.
        it.write_timestamp(self)

    # --- the Launcher's side ---------------------------------------------------------
    def drop_translations(self, gpa, length):
        """Forget translated code for Guest-physical [gpa, gpa+length).

        unicorn translates the start address through the current MMU and then drops
        every translation block in that *physical* range, so one virtual alias of the
        first page is enough: gpa itself while linear, kernel_address + gpa afterwards.
        With no alias we drop the whole translation cache (correct, just slower).
        """
        if length <= 0:
            return
        page = gpa & ~0xFFF
        end = gpa + length
        vaddr = page_tables.physical_alias(self, page)
        if vaddr is None:
            self.uc.ctl_flush_tb()
            return
        ui = self.ui
        cpl = ui.cpl
        if cpl != GUEST_PL:
            ui.cpl = GUEST_PL         # translate as the kernel: the alias is supervisor
        try:
            self.uc.ctl_remove_cache(vaddr, vaddr + (end - page))
        finally:
            if cpl != GUEST_PL:
                ui.cpl = cpl
            # A failed walk inside unicorn leaves a fault "in flight": forget it.
            ui.clear_exception_state()
