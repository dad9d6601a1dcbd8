"""Interrupts and traps (mirrors drivers/lguest/interrupts_and_traps.c, Linux 3.16).

Three kinds of event reach the Guest through here: virtual interrupts from the Launcher
and the clock (IRQ n on vector 0x20+n), traps and faults from the Guest itself, and its
system calls.  The real Host let some traps go straight into the Guest through the real
IDT; unicorn never uses an IDT, so every one of them comes through deliver_trap(), which
builds the same frame the CPU would have built.

The Guest never really disables interrupts: it keeps a flag in lguest_data.irq_enabled
and we honour it here, along with the blocked_interrupts bitmap and the "no interrupts
here" window [noirq_start, noirq_end) around its iret.
"""

import struct
import time

import lgtrace

from . import page_tables
from .abi import (FIRST_EXTERNAL_VECTOR, GUEST_CS, GUEST_PL, IDT_ENTRIES, LD_BLOCKED_INTERRUPTS,
                  LD_IRQ_ENABLED, LD_IRQ_PENDING, LD_TIME, LGUEST_IRQS,
                  LGUEST_TRAP_ENTRY, SYSCALL_VECTOR, X86_EFLAGS_IF, X86_EFLAGS_NT,
                  X86_EFLAGS_RF, X86_EFLAGS_TF, X86_EFLAGS_VM)

_TRAP_FLAGS = X86_EFLAGS_TF | X86_EFLAGS_VM | X86_EFLAGS_RF | X86_EFLAGS_NT
_FRAMES = {n: struct.Struct("<%dI" % n) for n in (3, 4, 5, 6)}


def idt_address(lo, hi):
    """The handler address split across the two words of a gate."""
    return (lo & 0x0000FFFF) | (hi & 0xFFFF0000)


def idt_type(lo, hi):
    return (hi >> 8) & 0xF


def idt_present(lo, hi):
    return bool(hi & 0x8000)


def has_err(trap):
    """The six traps for which the CPU pushes an error code."""
    return trap == 8 or 10 <= trap <= 14 or trap == 17


def write_timestamp(cpu):
    """Copy CLOCK_REALTIME into lguest_data.time; mirrors write_timestamp()."""
    if cpu.lguest_data is None:
        return
    ns = time.time_ns()
    cpu.write_u32(cpu.lguest_data + LD_TIME, (ns // 1000000000) & 0xFFFFFFFF)
    cpu.write_u32(cpu.lguest_data + LD_TIME + 4, ns % 1000000000)


def set_guest_interrupt(cpu, lo, hi, has_err_code, errcode=0):
    """Push an interrupt frame and jump to the handler; mirrors set_guest_interrupt().

    lo/hi: the two words of the IDT entry.  If the Guest was in ring 3 we switch to the
    stack it gave us with LHCALL_SET_STACK and push its ss and esp first.  Like the real
    Host we translate the top of the stack once and push downwards from that physical
    address (Linux's kernel stacks are physically contiguous).
    """
    ui = cpu.ui
    old_ss = ui.ss
    old_cs = ui.cs
    old_esp = ui.esp
    old_eip = ui.eip
    real_eflags = eflags = ui.eflags

    to_ring1 = (old_ss & 3) != GUEST_PL
    if to_ring1:
        virtstack = cpu.esp1
        ss = cpu.ss1
    else:
        virtstack = old_esp
        ss = old_ss
    gstack = origstack = page_tables.guest_pa(cpu, virtstack)

    # The Guest's idea of IF lives in lguest_data.irq_enabled: the CPU's IF is always on.
    ld = cpu.lguest_data
    if ld is not None and not cpu.u32_at(ld + LD_IRQ_ENABLED) & X86_EFLAGS_IF:
        eflags &= ~X86_EFLAGS_IF
    # The frame, lowest address first: [error code,] eip, cs, eflags[, esp, ss].
    if to_ring1:
        frame = (old_eip, old_cs, eflags, old_esp, old_ss)
    else:
        frame = (old_eip, old_cs, eflags)
    if has_err_code:
        frame = (errcode,) + frame
    gstack -= 4 * len(frame)
    if 0 <= gstack and origstack <= cpu.mem_limit and cpu.dead is None:
        _FRAMES[len(frame)].pack_into(cpu.mem, gstack, *frame)
    else:
        # Off the end of Guest memory somewhere: push word by word so the kill names
        # the first bad address, as the C's one-word lgwrite()s did.
        g = origstack
        for val in reversed(frame):
            g -= 4
            cpu.lgwrite_u32(g, val)
    if cpu.dead is not None:
        return

    if to_ring1:
        # Ring 3 -> ring 1: QEMU takes the privilege level from %ss, and only lets us load
        # an %ss whose RPL matches it, so set the level first.
        ui.cpl = GUEST_PL
        if ui.load_seg("ss", ss):
            cpu.kill_guest("bad stack segment %i" % ss)
            return
    if old_cs != GUEST_CS and ui.load_seg("cs", GUEST_CS):
        cpu.kill_guest("unhandled trap 256 at %#x (0)" % old_eip)
        return
    ui.esp = virtstack + (gstack - origstack)
    ui.eip = (lo & 0x0000FFFF) | (hi & 0xFFFF0000)     # idt_address()
    # Trapping always clears TF, VM, RF and NT (IF stays on: it is never really off).
    if real_eflags & _TRAP_FLAGS:
        ui.eflags = real_eflags & ~_TRAP_FLAGS

    # An interrupt gate (type 0xE) expects interrupts disabled on entry.
    if (hi >> 8) & 0xF == 0xE:
        if ld is None:
            cpu.kill_guest("Disabling interrupts")
        else:
            cpu.write_u32(ld + LD_IRQ_ENABLED, 0)


def interrupt_pending(cpu):
    """First deliverable interrupt and whether there are more: (irq, more).

    irq == LGUEST_IRQS means none.  Mirrors interrupt_pending(); the 3.16 code set
    *more from find_next_bit(), which is always non-zero, so it never cleared
    irq_pending.  We compute what it meant ("is another one waiting?") so the Guest is
    not asked for a useless SEND_INTERRUPTS after every enable.
    """
    if cpu.lguest_data is None:
        return LGUEST_IRQS, False
    blk = cpu.u32_at(cpu.lguest_data + LD_BLOCKED_INTERRUPTS)
    pend = cpu.irqs_pending & ~blk
    if not pend:
        return LGUEST_IRQS, False
    low = pend & -pend
    return low.bit_length() - 1, pend != low


def try_deliver_interrupt(cpu, irq, more):
    """Divert the Guest to the handler for irq, if it can take it now.

    Mirrors try_deliver_interrupt() (3.16, with its noirq_start/noirq_end window).
    """
    eip = cpu.ui.eip
    if cpu.noirq_start <= eip < cpu.noirq_end:
        return
    ld = cpu.lguest_data
    if cpu.halted:
        # A halted Guest is woken by any interrupt, with interrupts back on.
        cpu.write_u32(ld + LD_IRQ_ENABLED, X86_EFLAGS_IF)
        cpu.halted = False
    elif not cpu.u32_at(ld + LD_IRQ_ENABLED) & X86_EFLAGS_IF:
        # Interrupts off: tell it one is waiting; it will SEND_INTERRUPTS on enable.
        cpu.write_u32(ld + LD_IRQ_PENDING, X86_EFLAGS_IF)
        return

    lo, hi = cpu.idt[FIRST_EXTERNAL_VECTOR + irq]
    if idt_present(lo, hi):
        cpu.irqs_pending &= ~(1 << irq)
        set_guest_interrupt(cpu, lo, hi, False)
    # "If they don't have a handler (yet?), we just ignore it": it stays pending.
    write_timestamp(cpu)
    if not more:
        cpu.write_u32(ld + LD_IRQ_PENDING, 0)


def deliver_interrupts(cpu):
    """The top of the run_guest() loop: deliver the first pending interrupt, if any."""
    if not cpu.irqs_pending:
        return
    irq, more = interrupt_pending(cpu)
    if irq < LGUEST_IRQS:
        try_deliver_interrupt(cpu, irq, more)
    if lgtrace.on: lgtrace.interrupt(cpu, irq)   # delivered, or why not


def set_interrupt(cpu, irq):
    """Make irq pending; the run loop delivers it.  Mirrors set_interrupt()."""
    cpu.irqs_pending |= 1 << irq


def could_be_syscall(cpu, num):
    """Linux uses 0x80; the Guest may name another in lguest_data.syscall_vec."""
    return num == SYSCALL_VECTOR or num == cpu.syscall_vec


def deliver_trap(cpu, num, errcode=0):
    """Reflect trap num into the Guest; False if it has no handler.  Mirrors deliver_trap()."""
    if num >= IDT_ENTRIES:
        return False
    lo, hi = cpu.idt[num]
    if not idt_present(lo, hi):
        return False
    set_guest_interrupt(cpu, lo, hi, has_err(num), errcode)
    return True


def gate_dpl(cpu, num):
    """The privilege level a software "int num" needs, as the real IDT would say.

    The hypercall gate was DPL 1 (GUEST_PL); every other gate carried the DPL the
    Guest gave (zeroed entries: 0), see default_idt_entry() and copy_traps().
    """
    if num == LGUEST_TRAP_ENTRY:
        return GUEST_PL
    return (cpu.idt[num][1] >> 13) & 3


def set_trap(cpu, num, lo, hi):
    """Check and store one IDT entry; mirrors set_trap()."""
    if not idt_present(lo, hi):
        cpu.idt[num] = (0, 0)
        return
    t = idt_type(lo, hi)
    if t not in (0xE, 0xF):
        cpu.kill_guest("bad IDT type %i" % t)
        return
    # Only the handler address, present bit, DPL and type survive.
    cpu.idt[num] = ((GUEST_CS << 16) | (lo & 0x0000FFFF), hi & 0xFFFFEF00)


def load_guest_idt_entry(cpu, num, lo, hi):
    """LHCALL_LOAD_IDT_ENTRY; mirrors load_guest_idt_entry()."""
    # The Guest never handles NMI, double fault, spurious interrupt or the hypercall.
    if num in (2, 8, 15, LGUEST_TRAP_ENTRY):
        return
    if num >= IDT_ENTRIES:
        cpu.kill_guest("Setting idt entry %u" % num)
        return
    set_trap(cpu, num, lo, hi)


def guest_set_stack(cpu, seg, esp, pages):
    """LHCALL_SET_STACK: the kernel stack for traps from ring 3; mirrors guest_set_stack()."""
    if (seg & 3) != GUEST_PL:
        cpu.kill_guest("bad stack segment %i" % _s32(seg))
        return
    if pages > 2:
        cpu.kill_guest("bad stack pages %u" % pages)
        return
    cpu.ss1 = seg
    cpu.esp1 = esp
    cpu.stack_pages = pages
    page_tables.pin_stack_pages(cpu)


def guest_set_clockevent(cpu, delta):
    """LHCALL_SET_CLOCKEVENT: IRQ 0 in delta ns (0 cancels); mirrors guest_set_clockevent().

    The real Host used an hrtimer on wall-clock time; we use the monotonic clock, which
    is what "delta from now" means, watched by the Host's helper thread.

    A deadline that has already passed counts as fired even if the thread has not
    noticed yet: the hrtimer would have raised IRQ 0 on its own the moment it expired,
    so re-arming (or cancelling) afterwards never took that interrupt back.  Linux
    re-arms with interrupts off all the time (nohz idle entry, hrtimer_start), so
    without this the tick could silently go missing.
    """
    if cpu.channel.set_clockevent(delta):
        set_interrupt(cpu, 0)


def _s32(v):
    return v - (1 << 32) if v & 0x80000000 else v
