"""The heart of the Host: run_guest() and what happens when the Guest traps.

Mirrors drivers/lguest/core.c (run_guest, lgread/lgwrite) and x86/core.c
(lguest_arch_handle_trap, emulate_insn).  The Switcher is gone: the Guest's code runs
inside unicorn's emu_start(), and everything that made the real Guest exit to the Host
arrives in a hook instead:

  UC_HOOK_INTR          every "int n" and every fault (the hypercall is "int $0x1f")
  UC_HOOK_INSN_INVALID  #UD
  UC_HOOK_INSN (in/out) I/O instructions, which unicorn never faults at ring 1 or 3
  UC_HOOK_MEM_INVALID   the Guest reaching for memory it does not have

Most exits are handled inside the hook and the Guest carries on in the same emu_start()
(redirecting eip/esp/cs/ss from a hook works): a hypercall costs about a microsecond
that way.  The hook stops the emulation only when the Launcher must see something
(NOTIFY, BREAK, a death) or the Guest halts.
"""

import errno
import struct
import time

from unicorn import UcError
from unicorn import unicorn_const as UCC
from unicorn import x86_const as X
from unicorn.unicorn_py3.unicorn import uclib

from . import hypercalls, page_tables, segments
from . import interrupts_and_traps as it
from .abi import (_PAGE_TABLE, GUEST_PL, IDT_ENTRIES, LD_CR2, LGUEST_IRQS, LGUEST_TRAP_ENTRY,
                  PAGE_SIZE, SWITCHER_ADDR, X86_CR0_TS, X86_CR4_PSE)
from .channel import Channel
from .cpu import HOST_CR4, HostPages, make_engine, setup_regs
from .tsc import TscRate
from .ucinternals import (CS_SELECTOR_WORD, EAX, EBX, ECX, EDX, ESI, R_CS, R_DS, R_ES, R_FS,
                          R_GS)

UNTIL = 1 << 40               # an emu_start() end address the Guest can never reach
_U32 = struct.Struct("<I")

_SEG_REGS = ((R_DS, X.UC_X86_REG_DS), (R_ES, X.UC_X86_REG_ES),
             (R_FS, X.UC_X86_REG_FS), (R_GS, X.UC_X86_REG_GS))

# uc_ctl() codes, encoded as the binding does: (op << 30) | (nargs << 26) | ctl
_CTL_TLB_FLUSH = (UCC.UC_CTL_IO_WRITE << 30) | UCC.UC_CTL_TLB_FLUSH


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
    """One Guest and its one CPU (struct lguest + struct lg_cpu in C).

    Guest memory is the Launcher's mapping at `base`, pfn_limit pages long; Guest-physical
    address N is byte N of self.mem and unicorn physical address N.
    """

    def __init__(self, base, pfn_limit, start):
        import ctypes
        self.pfn_limit = pfn_limit
        self.mem_limit = pfn_limit * PAGE_SIZE
        self._memobj = (ctypes.c_char * self.mem_limit).from_address(base)
        self.mem = memoryview(self._memobj).cast("B")
        self.uc, self.ui = make_engine(base, pfn_limit)
        self.tsc = TscRate()          # starts measuring now; read at LGUEST_INIT
        self._uch = self.uc._uch
        self.host = HostPages(self.uc, pfn_limit)
        self.gdt = self.host.gdt
        self.idt = [(0, 0)] * IDT_ENTRIES

        self.lguest_data = None
        self.noirq_start = self.noirq_end = 0
        self.kernel_address = None
        self.syscall_vec = 0x80
        self.irqs_pending = 0
        self.halted = False
        self.ts = 0
        self.pending_notify = 0
        self.hcall = None
        self.next_hcall = 0
        self.dead = None
        self.poweroff = self.restart = False
        self.break_out = False
        self.waker_died = False
        self.esp1 = self.ss1 = self.stack_pages = 0
        self.linear_pages = True
        self.pgdir = 0
        self.known_pgdirs = set()
        self.gdt_changed = False
        self.cr4 = 0
        self.stop_asked = False       # a hook asked emu_start to stop, for a reason
        self.fault = None             # (access, address) from the memory hook
        self.hook_error = None        # an exception raised inside _hook_intr

        segments.setup_default_gdt_entries(self)
        segments.setup_guest_gdt(self)
        setup_regs(self.uc, self.ui, start)
        self.cr4 = HOST_CR4 | X86_CR4_PSE
        self.channel = Channel(self.uc)
        self._install_hooks()

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

    def kill_guest(self, reason):
        """Mark the Guest dead; the first reason given wins.  Mirrors kill_guest()."""
        if self.dead is None:
            self.dead = reason

    # --- CPU control registers -------------------------------------------------------
    def tlb_flush(self):
        uclib.uc_ctl(self._uch, _CTL_TLB_FLUSH)

    def tlb_flush_page(self, vaddr):
        self.ui.flush_tlb_page(vaddr)

    def set_cr3(self, val):
        self.ui.reg_write(X.UC_X86_REG_CR3, val)

    def set_cr4(self, val):
        self.cr4 = val
        self.ui.reg_write(X.UC_X86_REG_CR4, val)

    def set_ts(self, ts):
        """LHCALL_TS: the Guest's CR0.TS, which makes its FPU use trap with #NM."""
        if bool(ts) != bool(self.ts):
            cr0 = self.ui.reg_read(X.UC_X86_REG_CR0)
            cr0 = cr0 | X86_CR0_TS if ts else cr0 & ~X86_CR0_TS
            self.ui.reg_write(X.UC_X86_REG_CR0, cr0)
        self.ts = ts

    def reload_segments(self):
        """After the GDT changed, reload %ds/%es/%fs/%gs from it, as the Switcher did on
        every entry; a selector that no longer loads kills with the Switcher's words."""
        self.gdt_changed = False
        ui = self.ui
        for seg, reg in _SEG_REGS:
            sel = ui.selector(seg)
            if sel & ~3 and ui.reg_write(reg, sel):
                self.kill_guest("unhandled trap 256 at %#x (%#x)" % (ui.q[16] & 0xFFFFFFFF, 0))
                return

    # --- hooks: lguest_arch_handle_trap() --------------------------------------------
    def _install_hooks(self):
        uc = self.uc
        self.ui.hook_intr_raw(self._intr_entry)
        uc.hook_add(UCC.UC_HOOK_INSN_INVALID, self._hook_invalid)
        uc.hook_add(UCC.UC_HOOK_INSN, self._hook_in, None, 1, 0, X.UC_X86_INS_IN)
        uc.hook_add(UCC.UC_HOOK_INSN, self._hook_out, None, 1, 0, X.UC_X86_INS_OUT)
        # Only where the Guest has no memory: a memory hook over an address keeps
        # every store there on the engine's slow path (see ucinternals.py).
        uc.hook_add(UCC.UC_HOOK_MEM_INVALID, self._hook_mem_invalid, None,
                    self.mem_limit, (1 << 64) - 1)

    def _stop(self):
        self.stop_asked = True
        self.uc.emu_stop()

    def _after_exit(self):
        """What the top of run_guest() does before re-entering the Guest, done inline in
        the hook when nothing needs the Launcher: deliver interrupts, or else stop."""
        if (self.dead is not None or self.pending_notify or self.hcall is not None
                or self.channel.kick_gen != self.channel.kick_seen):
            self._stop()
            return
        if self.gdt_changed:
            self.reload_segments()
        ch = self.channel
        dl = ch.deadline
        if dl is not None and time.monotonic() >= dl:
            self._stop()              # let the run loop take the timer the proper way
            return
        if self.irqs_pending:
            it.deliver_interrupts(self)
            if self.irqs_pending:
                ch.request_recheck()
        if self.halted or self.dead is not None:
            self._stop()

    def _intr_entry(self, intno):
        """The raw UC_HOOK_INTR callback: nothing may escape into ctypes, which would
        print a traceback and carry on.  Whatever goes wrong stops the Guest, and the
        run loop turns it into one line (or re-raises ^C and friends)."""
        try:
            self._hook_intr(intno)
        except BaseException as e:
            if self.hook_error is None:
                self.hook_error = e
            self._stop()

    def _hook_intr(self, intno):
        ui = self.ui
        if intno == LGUEST_TRAP_ENTRY and (ui.d[CS_SELECTOR_WORD] & 3) == GUEST_PL:
            # The hypercall, from the Guest kernel.  struct hcall_args maps over the
            # registers: eax, ebx, ecx, edx, esi.
            q = ui.q
            self.hcall = (q[EAX] & 0xFFFFFFFF, q[EBX] & 0xFFFFFFFF, q[ECX] & 0xFFFFFFFF,
                          q[EDX] & 0xFFFFFFFF, q[ESI] & 0xFFFFFFFF)
            hypercalls.do_hypercalls(self)
            self._after_exit()
            return
        ui.clear_exception_state()
        if ui.exception_is_int():
            self._software_int(intno)
        else:
            self.handle_trap(intno, ui.error_code())
        self._after_exit()

    def _software_int(self, num):
        """"int n" (and int3/into): the IDT gate's DPL decides, as the CPU did for the
        real Host.  Too privileged a gate is a #GP with error code (n << 3) | 2 at the
        int instruction itself."""
        ui = self.ui
        next_eip = ui.q[16] & 0xFFFFFFFF
        if ui.cpl() > it.gate_dpl(self, num):
            # "int n" is CD nn; int3 (CC) and into (CE) are one byte.
            insn = next_eip - 2
            if self._peek_byte(insn) != 0xCD or self._peek_byte(insn + 1) != num:
                insn = next_eip - 1
            ui.q[16] = insn
            self.handle_trap(13, (num << 3) | 2)
            return
        if num >= 32:
            if it.could_be_syscall(self, num):
                # A trap gate went straight to the Guest through the real IDT.  (3.16
                # silently dropped an *interrupt* gate here; later Hosts delivered it,
                # and so do we.)
                if not it.deliver_trap(self, num):
                    self._unhandled(num, 0)
            # Any other vector >= 32 was taken by the Host as a real interrupt: ignored.
            return
        if num == 7 and not self.ts:
            return
        if num == 14 and self.lguest_data is not None:
            self.write_u32(self.lguest_data + LD_CR2, ui.cr(2))
        if not it.deliver_trap(self, num, 0):
            self._unhandled(num, 0)

    def handle_trap(self, trapnum, errcode):
        """A fault the Guest took; mirrors lguest_arch_handle_trap()."""
        ui = self.ui
        if trapnum == 13:
            if errcode == 0 and self.emulate_insn():
                return
        elif trapnum == 14:
            cr2 = ui.cr(2) & 0xFFFFFFFF
            if not self.linear_pages and not self._check_gpgd(cr2):
                return
            if self.lguest_data is not None:
                self.write_u32(self.lguest_data + LD_CR2, cr2)
            if not it.deliver_trap(self, 14, errcode):
                self._unhandled(14, cr2)
            return
        elif trapnum == 7:
            # #NM: only the Guest's TS makes it its business.
            if not self.ts:
                return
        if not it.deliver_trap(self, trapnum, errcode):
            self._unhandled(trapnum, errcode)

    def _check_gpgd(self, vaddr):
        """The checks demand_page() made on every fault: a present top-level entry with
        odd flags or a page table outside the Guest kills "bad page directory entry"
        (unicorn just read zeroes there and called it a not-present page)."""
        if vaddr >= SWITCHER_ADDR:
            return True               # the Host's own slot: a plain fault for the Guest
        pgd = self.read_u32(self.pgdir + (vaddr >> 22) * 4)
        if pgd & 1 and ((pgd & 0xFFF) & ~_PAGE_TABLE or (pgd >> 12) >= self.pfn_limit):
            self.kill_guest("bad page directory entry")
            return False
        return True

    def _unhandled(self, trapnum, info):
        self.kill_guest("unhandled trap %li at %#x (%#x)"
                        % (trapnum, self.ui.q[16] & 0xFFFFFFFF, info & 0xFFFFFFFF))

    def emulate_insn(self):
        """Emulate the few instructions that #GP at ring 1; mirrors emulate_insn().

        cli is skipped; in/out (8/16/32-bit, immediate or %dx port) read all ones and
        write nowhere.  Only the Guest kernel gets this: from user space it is a #GP.
        Returns True if done.  (unicorn itself never faults on in/out: see _hook_in.)
        """
        ui = self.ui
        eip = ui.q[16] & 0xFFFFFFFF
        if (ui.selector(R_CS) & 3) != GUEST_PL:
            return False
        physaddr = page_tables.guest_pa(self, eip)
        insn = self._rd8(physaddr)
        if self.dead is not None:
            return False
        if insn == 0xFA:                       # cli
            ui.q[16] = eip + 1
            return True
        if insn == 0x0F and not it.idt_present(*self.idt[13]):
            # rdmsr/wrmsr before the Guest has any #GP handler.  Our departure from
            # the real Host, which killed "unhandled trap 13" here: unicorn's CPU
            # says GenuineIntel family 6, and a Linux built with the early microcode
            # loader (CONFIG_MICROCODE_EARLY) probes MSRs in startup_32, before
            # lguest_entry.  Reading zeroes (and dropping writes) lets that loader
            # find nothing to do, as on a CPU without an update.  Once the Guest has
            # a #GP gate it gets the #GP, as it did on the real Host (rdmsr_safe).
            op2 = self._rd8(physaddr + 1)
            if op2 == 0x32:                    # rdmsr: edx:eax = 0
                ui.q[EAX] = 0
                ui.q[EDX] = 0
                ui.q[16] = eip + 2
                return True
            if op2 == 0x30:                    # wrmsr: ignored
                ui.q[16] = eip + 2
                return True
        insnlen = 0
        small = False
        if insn == 0x66:                       # operand-size prefix: 16-bit in/out
            small = True
            insnlen = 1
            insn = self._rd8(physaddr + 1)
        op = insn & 0xFE
        if op == 0xE4:
            insnlen += 2
            is_in = True
        elif op == 0xEC:
            insnlen += 1
            is_in = True
        elif op == 0xE6:
            insnlen += 2
            is_in = False
        elif op == 0xEE:
            insnlen += 1
            is_in = False
        else:
            return False
        if is_in:
            eax = ui.q[EAX] & 0xFFFFFFFF
            if insn & 1:
                eax = (eax | 0xFFFF) if small else 0xFFFFFFFF
            else:
                eax |= 0xFF
            ui.q[EAX] = eax
        ui.q[16] = eip + insnlen
        return True

    def _peek_byte(self, vaddr):
        """The byte at Guest-virtual vaddr, or None; never kills (unlike guest_pa())."""
        if self.linear_pages:
            pa = vaddr
        else:
            ent = page_tables.lookup_pte(self, vaddr)
            if ent is None or not ent[0] & 1 or not ent[1] & 1:
                return None
            pa = (ent[1] & 0xFFFFF000) | (vaddr & 0xFFF)
        return self.mem[pa] if 0 <= pa < self.mem_limit else None

    def _rd8(self, addr):
        if 0 <= addr < self.mem_limit:
            return self.mem[addr]
        self.kill_guest("bad read address %#x len %u" % (addr & 0xFFFFFFFF, 1))
        return 0

    def _hook_invalid(self, uc, _ud):
        """#UD: reflect trap 6."""
        self.ui.clear_exception_state()
        self.handle_trap(6, 0)
        self._after_exit()
        return True

    def _hook_in(self, uc, port, size, _ud):
        """unicorn runs "in" without the I/O permission check that made it #GP(0) for the
        real Host; answer as emulate_insn() did: all ones (only the low byte/word for
        8/16-bit, which is all unicorn stores)."""
        return 0xFF if size == 1 else 0xFFFF if size == 2 else 0xFFFFFFFF

    def _hook_out(self, uc, port, size, value, _ud):
        """"out" goes nowhere, as emulate_insn() did."""

    def _hook_mem_invalid(self, uc, access, address, size, value, _ud):
        """The Guest touched memory it doesn't have: remember where, let unicorn stop."""
        if self.fault is None:
            self.fault = (access, address & 0xFFFFFFFF)
        return False

    def _memory_death(self, err):
        """Turn unicorn's memory error into the kill the real Host would have given.

        unicorn names the *physical* address.  Past NEW_PGTABLE the Guest reached it
        through its own tables: through a page-directory entry (the address is inside a
        "page table" outside memory) or a page-table entry, which the real Host refused
        as "bad page directory entry" / "bad page table entry" in demand_page().
        """
        access, paddr = self.fault if self.fault else (None, None)
        self.fault = None
        if paddr is not None and not self.linear_pages and paddr >= self.mem_limit:
            frame = paddr & 0xFFFFF000
            pd = self.pgdir
            for i in range(1024):
                pgd = self.u32_at(pd + 4 * i)
                if pgd & 1 and (pgd & 0xFFFFF000) == frame and i != 1023:
                    self.kill_guest("bad page directory entry")
                    return
            self.kill_guest("bad page table entry")
            return
        where = paddr if paddr is not None else self.ui.q[16] & 0xFFFFFFFF
        if access in (UCC.UC_MEM_WRITE_UNMAPPED, UCC.UC_MEM_WRITE_PROT):
            self.kill_guest("bad write address %#x len %u" % (where, 4))
        else:
            self.kill_guest("bad read address %#x len %u" % (where, 4))

    # --- the run loop ----------------------------------------------------------------
    def run_guest(self):
        """Run until something for the Launcher; mirrors run_guest().

        Returns a NOTIFY address; raises BlockingIOError(EAGAIN) for a BREAK, WakerDied,
        or GuestDied.
        """
        ch = self.channel
        ui = self.ui
        while self.dead is None:
            # A hypercall left pending behind an async NOTIFY runs now, once the
            # Launcher has seen that NOTIFY (read() cleared pending_notify).
            if self.hcall is not None and not self.pending_notify:
                hypercalls.do_hypercalls(self)
            if self.pending_notify:
                return self.pending_notify
            self.collect_events()
            if self.break_out:
                raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
            if self.waker_died:
                raise WakerDied("the Waker has gone away")
            irq, more = it.interrupt_pending(self)
            if irq < LGUEST_IRQS:
                it.try_deliver_interrupt(self, irq, more)
            if self.dead is not None:
                break
            if self.halted:
                self.sleep()
                continue
            if self.gdt_changed:
                self.reload_segments()
            page_tables.check_switcher(self)
            if self.irqs_pending:
                # Still waiting (interrupts off, blocked, or one at a time): look again
                # soon even if the Guest makes no hypercall, as a host tick would have.
                ch.request_recheck()

            # Into the Guest.  Lower the stop flag before the last look at the events:
            # an event the thread raises after this look finds the flag up again and
            # stops the engine at its first block boundary.
            ch.stop_request.clear()
            if ch.kick_gen != ch.kick_seen:
                continue
            self.stop_asked = False
            ui.clear_exception_state()
            try:
                self.uc.emu_start(ui.q[16] & 0xFFFFFFFF, UNTIL)
            except UcError as e:
                self._memory_death(e)
            except Exception as e:    # a hook went wrong: still one clean line
                self.kill_guest("Host error: %s: %s" % (type(e).__name__, e))
            if self.hook_error is not None:
                e, self.hook_error = self.hook_error, None
                if not isinstance(e, Exception):
                    raise e           # KeyboardInterrupt, SystemExit: not ours to eat
                self.kill_guest("Host error: %s: %s" % (type(e).__name__, e))
            if (not self.stop_asked and ch.kick_gen == ch.kick_seen
                    and not ch.stop_request.is_set()
                    and self.dead is None and not self.halted and not self.pending_notify):
                # Nobody asked it to stop: unicorn's triple fault (a fault it could not
                # deliver) ends emu_start() quietly.  (A raised stop flag is a reason
                # even with no new event: the thread may raise it just after we took
                # the event it belongs to, between its two stores.)
                self.kill_guest("unhandled trap 8 at %#x (0): triple fault"
                                % (ui.q[16] & 0xFFFFFFFF))
        raise GuestDied(self.dead, self.poweroff, self.restart)

    def collect_events(self):
        """Take what the helper thread saw: timer -> IRQ 0, BREAK, Waker gone."""
        ch = self.channel
        g = ch.kick_gen
        dl = ch.deadline
        if g == ch.kick_seen and (dl is None or time.monotonic() < dl):
            return
        with ch.lock:
            if ch.deadline is not None and time.monotonic() >= ch.deadline:
                ch.deadline = None
                ch.timer_fired = True
            if ch.timer_fired:
                ch.timer_fired = False
                self.irqs_pending |= 1
            if ch.break_flag:
                ch.break_flag = False
                self.break_out = True
            if ch.waker_gone:
                self.waker_died = True
            ch.kick_seen = g

    def sleep(self):
        """HALT: sleep until an interrupt we can deliver, a BREAK, the clock or death.
        No busy loop: the helper thread sets ch.wake."""
        ch = self.channel
        ch.start()
        ch.wake.clear()
        self.collect_events()
        if self.break_out or self.waker_died:
            return
        irq, _ = it.interrupt_pending(self)
        if irq < LGUEST_IRQS:
            return
        ch.wake.wait()
        self.collect_events()
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
        cpl = ui.cpl()
        if cpl != GUEST_PL:
            ui.set_cpl(GUEST_PL)      # translate as the kernel: the alias is supervisor
        try:
            self.uc.ctl_remove_cache(vaddr, vaddr + (end - page))
        finally:
            if cpl != GUEST_PL:
                ui.set_cpl(cpl)
            # A failed walk inside unicorn leaves a fault "in flight": forget it.
            ui.clear_exception_state()
