"""Hypercalls (mirrors drivers/lguest/hypercalls.c and lguest_arch_do_hcall()).

The Guest asks for Host services with "int $0x1f": eax holds the call number, ebx, ecx,
edx and esi the arguments.  It can also queue calls in the async ring in lguest_data
(hcall_status[] / hcalls[]), which we run, in order, on every hypercall entry before
the call itself.  This file is one big switch, as the C was.
"""

import lgtrace

from . import interrupts_and_traps as it
from . import page_tables, segments
from .abi import (HCALL_ARGS_SIZE, LD_HCALL_STATUS, LD_HCALLS, LD_KERNEL_ADDRESS, LD_NOIRQ_END,
                  LD_NOIRQ_START, LD_RESERVE_MEM, LD_SYSCALL_VEC, LD_TSC_KHZ, LGUEST_DATA_SIZE,
                  LGUEST_SHUTDOWN_POWEROFF, LGUEST_SHUTDOWN_RESTART, LHCALL_FLUSH_ASYNC,
                  LHCALL_FLUSH_TLB, LHCALL_HALT, LHCALL_LGUEST_INIT, LHCALL_LOAD_GDT_ENTRY,
                  LHCALL_LOAD_IDT_ENTRY, LHCALL_LOAD_TLS, LHCALL_NEW_PGTABLE, LHCALL_NOTIFY,
                  LHCALL_RING_SIZE, LHCALL_SEND_INTERRUPTS, LHCALL_SET_CLOCKEVENT,
                  LHCALL_SET_PGD, LHCALL_SET_PMD, LHCALL_SET_PTE, LHCALL_SET_STACK,
                  LHCALL_SHUTDOWN, LHCALL_TS,
                  PGDIR_SHIFT, RESERVE_MEM, SWITCHER_PGD_INDEX, SYSCALL_VECTOR)


def _s32(v):
    return v - (1 << 32) if v & 0x80000000 else v


def do_hcall(cpu, args):
    """Perform one hypercall.  args = (call, arg1, arg2, arg3, arg4), u32 each.

    Mirrors do_hcall() plus lguest_arch_do_hcall(); a number neither knows kills the
    Guest with "Bad hypercall %li".
    """
    call, a1, a2, a3, _a4 = args
    if call == LHCALL_SET_PTE:
        page_tables.guest_set_pte(cpu, a1, a2, a3)
    elif call == LHCALL_FLUSH_ASYNC or call == LHCALL_SEND_INTERRUPTS:
        # Nothing to do: entering the Host already ran the async ring and will look for
        # interrupts to deliver on the way out.
        pass
    elif call == LHCALL_NOTIFY:
        cpu.pending_notify = a1
    elif call == LHCALL_SET_CLOCKEVENT:
        it.guest_set_clockevent(cpu, a1)
    elif call == LHCALL_HALT:
        cpu.halted = True
    elif call == LHCALL_NEW_PGTABLE:
        page_tables.guest_new_pagetable(cpu, a1)
    elif call == LHCALL_SET_STACK:
        it.guest_set_stack(cpu, a1, a2, a3)
    elif call == LHCALL_SET_PGD:
        page_tables.guest_set_pgd(cpu, a1, a2)
    elif call == LHCALL_SET_PMD:
        page_tables.guest_set_pmd(cpu, a1, a2)
    elif call == LHCALL_FLUSH_TLB:
        # 1 = everything, 0 = user mappings only: one and the same for unicorn's TLB.
        page_tables.flush_tlb(cpu)
    elif call == LHCALL_LOAD_TLS:
        segments.guest_load_tls(cpu, a1)
    elif call == LHCALL_TS:
        cpu.set_ts(a1)
    elif call == LHCALL_LOAD_IDT_ENTRY:
        it.load_guest_idt_entry(cpu, a1, a2, a3)
    elif call == LHCALL_LOAD_GDT_ENTRY:
        segments.load_guest_gdt_entry(cpu, a1, a2, a3)
    elif call == LHCALL_SHUTDOWN:
        # If the read fails it kills the Guest itself, and that first reason wins.
        raw = cpu.lgread(a1, 128)
        msg = raw[:127].split(b"\0", 1)[0].decode("utf-8", "replace")
        cpu.kill_guest("CRASH: %s" % msg)
        if a2 == LGUEST_SHUTDOWN_RESTART:
            cpu.restart = True
        elif a2 == LGUEST_SHUTDOWN_POWEROFF and msg == "Power down":
            cpu.poweroff = True
    elif call == LHCALL_LGUEST_INIT:
        # You can't get here unless you're already initialized.
        cpu.kill_guest("already have lguest_data")
    else:
        cpu.kill_guest("Bad hypercall %li" % _s32(call))


def do_async_hcalls(cpu):
    """Run the queued hypercalls in lguest_data, in ring order; mirrors do_async_hcalls().

    We start where we stopped last time, mark each done with 0xFF, and stop early after
    a NOTIFY: the Launcher must see that one before anything queued behind it.
    """
    mem = cpu.mem
    ld = cpu.lguest_data
    status = bytes(mem[ld + LD_HCALL_STATUS:ld + LD_HCALL_STATUS + LHCALL_RING_SIZE])
    u32 = cpu.u32_at
    for _ in range(LHCALL_RING_SIZE):
        n = cpu.next_hcall
        if status[n] == 0xFF:
            break
        cpu.next_hcall = (n + 1) % LHCALL_RING_SIZE
        a = ld + LD_HCALLS + n * HCALL_ARGS_SIZE
        args = (u32(a), u32(a + 4), u32(a + 8), u32(a + 12), u32(a + 16))
        if lgtrace.on: lgtrace.async_hcall(cpu, n, args)
        do_hcall(cpu, args)
        mem[ld + LD_HCALL_STATUS + n] = 0xFF
        if cpu.pending_notify or cpu.dead:
            break


def initialize(cpu):
    """The first hypercall must be LGUEST_INIT; mirrors initialize() and
    lguest_arch_init_hypercalls() / page_table_guest_data_init()."""
    call, a1 = cpu.hcall[0], cpu.hcall[1]
    if call != LHCALL_LGUEST_INIT:
        cpu.kill_guest("hypercall %li before INIT" % _s32(call))
        return
    if not cpu.address_ok(a1, LGUEST_DATA_SIZE):
        # The C printed its still-NULL lguest_data pointer here.
        cpu.kill_guest("bad guest page (null)")
        return
    cpu.lguest_data = ld = a1
    # The TSC rate if the host's TSC is invariant, else 0: the Guest calibrates.
    cpu.write_u32(ld + LD_TSC_KHZ, cpu.tsc.khz())
    vec = cpu.u32_at(ld + LD_SYSCALL_VEC)
    if vec != SYSCALL_VECTOR:
        cpu.kill_guest("bad syscall vector")
    cpu.syscall_vec = vec
    cpu.noirq_start = cpu.u32_at(ld + LD_NOIRQ_START)
    cpu.noirq_end = cpu.u32_at(ld + LD_NOIRQ_END)
    it.write_timestamp(cpu)
    # Keep out of the top 4 MiB: that is where the Switcher (for us: the GDT) lives.
    cpu.write_u32(ld + LD_RESERVE_MEM, RESERVE_MEM)
    kaddr = cpu.u32_at(ld + LD_KERNEL_ADDRESS)
    cpu.kernel_address = kaddr
    if (kaddr >> PGDIR_SHIFT) >= SWITCHER_PGD_INDEX:
        cpu.kill_guest("bad kernel address %#x" % kaddr)
    page_tables.flush_tlb(cpu)


def do_hypercalls(cpu):
    """Handle the pending hypercall cpu.hcall; mirrors do_hypercalls().

    The async ring runs first; if it stopped on a NOTIFY, the synchronous call stays
    pending (cpu.hcall is kept) and runs on the next entry, after the Launcher has seen
    the NOTIFY.  That was a real bug once ("Finding that bug sucked").
    """
    if cpu.lguest_data is None:
        initialize(cpu)
        cpu.hcall = None
        return
    if cpu.mem[cpu.lguest_data + LD_HCALL_STATUS + cpu.next_hcall] != 0xFF:
        do_async_hcalls(cpu)
    if not cpu.pending_notify:
        args = cpu.hcall
        cpu.hcall = None
        do_hcall(cpu, args)
