"""Running the Guest once, and what happens when it traps (mirrors drivers/lguest/x86/core.c:
lguest_arch_run_guest, lguest_arch_handle_trap, emulate_insn).

The Switcher is gone: the Guest's code runs inside unicorn's emu_start(), and everything
that made the real Guest exit to the Host arrives in a hook instead:

  UC_HOOK_INTR          every "int n" and every fault (the hypercall is "int $0x1f")
  UC_HOOK_INSN_INVALID  #UD
  UC_HOOK_INSN (in/out) I/O instructions, which unicorn never faults at ring 1 or 3
  UC_HOOK_MEM_INVALID   the Guest reaching for memory it does not have

Most traps are handled inside the hook, which then does what the top of run_guest()
would do (Guest.between_traps()) and lets the Guest carry on in the same emu_start():
a hypercall costs about a microsecond that way.  The engine stops only when the run
loop must act, and run_once() says why, as an Exit.
"""

import enum

from unicorn import UcError
from unicorn import unicorn_const as UCC
from unicorn import x86_const as X

import lgtrace

from . import hypercalls, page_tables
from . import interrupts_and_traps as it
from .abi import GUEST_PL, LD_CR2, LGUEST_TRAP_ENTRY

UNTIL = 1 << 40               # an emu_start() end address the Guest can never reach


class Exit(enum.Enum):
    """Why run_once() came back: every way out of the Guest has a name."""
    NOTIFY = "LHCALL_NOTIFY: an address for the Launcher"
    HALT = "LHCALL_HALT: nothing to do until an interrupt"
    EVENT = "the helper thread raised an event: clock, BREAK, Waker gone or recheck"
    DEATH = "a hypercall or a trap killed the Guest"
    MEMORY_FAULT = "the Guest reached memory it does not have (unicorn's UcError)"
    TRIPLE_FAULT = "a fault while delivering a double fault"
    HOST_ERROR = "the Host itself went wrong in a hook (Guest.host_error)"


def run_once(cpu):
    """Run the Guest until something needs the run loop; return why (an Exit).

    Mirrors lguest_arch_run_guest() (copy_in_guest_info, then into the Switcher): the
    GDT is reloaded if it changed and the Switcher's page is checked first.
    """
    ui = cpu.ui
    ev = cpu.events
    if cpu.gdt_changed:
        reload_segments(cpu)
        if cpu.dead is not None:
            return Exit.DEATH
    page_tables.check_switcher(cpu)
    if cpu.irqs_pending:
        # Still waiting (interrupts off, blocked, or one at a time): look again soon
        # even if the Guest makes no hypercall, as a host tick would have.
        cpu.recheck_interrupts()
    else:
        cpu.irq_wait_since = None
    # Lower the stop request before the last look at the events (see Events).
    ev.stop.clear()
    if ev.pending():
        return Exit.EVENT
    cpu.exit = None
    ui.clear_exception_state()
    if lgtrace.on: lgtrace.entering(cpu)          # the exit in progress ends
    try:
        cpu.uc.emu_start(ui.eip, UNTIL)
    except UcError:
        return Exit.MEMORY_FAULT
    except Exception as e:        # the binding itself: still one clean line
        cpu.host_error = e
        return Exit.HOST_ERROR
    if cpu.host_error is not None:
        return Exit.HOST_ERROR
    if cpu.exit is not None:
        return cpu.exit               # a hook stopped the engine, and said why
    if ui.triple_faulted():
        return Exit.TRIPLE_FAULT
    if ev.stop.is_set():
        return Exit.EVENT             # possibly nothing new: see Events
    cpu.host_error = RuntimeError("unicorn stopped at %#x for no reason we know" % ui.eip)
    return Exit.HOST_ERROR


# --- hooks: lguest_arch_handle_trap() ----------------------------------------------
def install_hooks(cpu):
    """Hook every way the Guest can trap.  Each hook handles the trap, then asks
    cpu.between_traps() whether the Guest runs on; if not it records why (cpu.exit)
    and stops the engine, from its own thread, where emu_stop() is precise.

    Nothing may escape a hook into ctypes, which would print a traceback and carry
    on: whatever goes wrong is kept in cpu.host_error and stops the Guest.
    """
    ui, uc = cpu.ui, cpu.uc
    stop = uc.emu_stop

    def hook_intr(intno):
        try:
            if intno == LGUEST_TRAP_ENTRY and (ui.cs & 3) == GUEST_PL:
                # The hypercall, from the Guest kernel: struct hcall_args maps over
                # the registers (eax, ebx, ecx, edx, esi).
                cpu.hcall = ui.hcall_args()
                hypercalls.do_hypercalls(cpu)
            else:
                ui.clear_exception_state()
                if ui.exception_is_int():
                    software_int(cpu, intno)
                else:
                    handle_trap(cpu, intno, ui.error_code())
            why = cpu.between_traps()
        except BaseException as e:
            if cpu.host_error is None:
                cpu.host_error = e
            why = Exit.HOST_ERROR
        if why is not None:
            cpu.exit = why
            stop()

    def hook_invalid(_uc, _ud):
        """#UD comes here, not to the INTR hook; QEMU raised it like any fault (not an
        "int", error code 0), so the same path reflects trap 6."""
        hook_intr(6)
        return True

    def hook_in(_uc, port, size, _ud):
        """unicorn runs "in" without the I/O permission check that made it #GP(0) for
        the real Host; answer as emulate_insn() did: all ones (only the low byte/word
        for 8/16-bit, which is all unicorn stores)."""
        return 0xFF if size == 1 else 0xFFFF if size == 2 else 0xFFFFFFFF

    def hook_out(_uc, port, size, value, _ud):
        """"out" goes nowhere, as emulate_insn() did."""

    def hook_mem_invalid(_uc, access, address, size, value, _ud):
        """The Guest touched memory it doesn't have: remember where, let unicorn stop
        (emu_start() raises UcError: Exit.MEMORY_FAULT)."""
        if cpu.fault is None:
            cpu.fault = (access, address)     # physical: above 4 GiB too (PAE)
        return False

    if lgtrace.on:
        hook_intr = lgtrace.trap_hook(cpu, hook_intr)     # --trace/--stats: time each exit
    ui.hook_intr_raw(hook_intr)
    uc.hook_add(UCC.UC_HOOK_INSN_INVALID, hook_invalid)
    uc.hook_add(UCC.UC_HOOK_INSN, hook_in, None, 1, 0, X.UC_X86_INS_IN)
    uc.hook_add(UCC.UC_HOOK_INSN, hook_out, None, 1, 0, X.UC_X86_INS_OUT)
    # Only where the Guest has no memory: a memory hook over an address keeps every
    # store there on the engine's slow path (patches/unicorn/0001).
    uc.hook_add(UCC.UC_HOOK_MEM_INVALID, hook_mem_invalid, None, cpu.mem_limit, (1 << 64) - 1)


def software_int(cpu, num):
    """"int n" (and int3/into): the IDT gate's DPL decides, as the CPU did for the real
    Host.  Too privileged a gate is a #GP with error code (n << 3) | 2 at the int
    instruction itself."""
    ui = cpu.ui
    next_eip = ui.eip
    if ui.cpl > it.gate_dpl(cpu, num):
        # "int n" is CD nn; int3 (CC) and into (CE) are one byte.
        insn = next_eip - 2
        if _peek_byte(cpu, insn) != 0xCD or _peek_byte(cpu, insn + 1) != num:
            insn = next_eip - 1
        ui.eip = insn
        handle_trap(cpu, 13, (num << 3) | 2)
        return
    if num >= 32:
        if it.could_be_syscall(cpu, num):
            # A trap gate went straight to the Guest through the real IDT.  (3.16
            # silently dropped an *interrupt* gate here; later Hosts delivered it,
            # and so do we.)
            if not it.deliver_trap(cpu, num):
                _unhandled(cpu, num, 0)
        # Any other vector >= 32 was taken by the Host as a real interrupt: ignored.
        return
    if num == 7 and not cpu.ts:
        return
    if num == 14 and cpu.lguest_data is not None:
        cpu.write_u32(cpu.lguest_data + LD_CR2, ui.cr2)
    if not it.deliver_trap(cpu, num, 0):
        _unhandled(cpu, num, 0)


def handle_trap(cpu, trapnum, errcode):
    """A fault the Guest took; mirrors lguest_arch_handle_trap()."""
    if trapnum == 13:
        if errcode == 0 and emulate_insn(cpu):
            return
    elif trapnum == 14:
        cr2 = cpu.ui.cr2
        if not page_tables.check_fault(cpu, cr2):
            return
        if cpu.lguest_data is not None:
            cpu.write_u32(cpu.lguest_data + LD_CR2, cr2)
        if not it.deliver_trap(cpu, 14, errcode):
            _unhandled(cpu, 14, cr2)
        return
    elif trapnum == 7:
        # #NM: only the Guest's TS makes it its business.
        if not cpu.ts:
            return
    if not it.deliver_trap(cpu, trapnum, errcode):
        _unhandled(cpu, trapnum, errcode)


def _unhandled(cpu, trapnum, info):
    cpu.kill_guest("unhandled trap %li at %#x (%#x)"
                   % (trapnum, cpu.ui.eip, info & 0xFFFFFFFF))


def emulate_insn(cpu):
    """Emulate the few instructions that #GP at ring 1; mirrors emulate_insn().

    cli is skipped; in/out (8/16/32-bit, immediate or %dx port) read all ones and write
    nowhere.  Only the Guest kernel gets this: from user space it is a #GP.  Returns
    True if done.  (unicorn itself never faults on in/out: see hook_in.)
    """
    ui = cpu.ui
    eip = ui.eip
    if (ui.cs & 3) != GUEST_PL:
        return False
    physaddr = page_tables.guest_pa(cpu, eip)
    insn = _rd8(cpu, physaddr)
    if cpu.dead is not None:
        return False
    if insn == 0xFA:                       # cli
        ui.eip = eip + 1
        return True
    if insn == 0x0F and not it.idt_present(*cpu.idt[13]):
        # rdmsr/wrmsr before the Guest has any #GP handler.  Our departure from the
        # real Host, which killed "unhandled trap 13" here: unicorn's CPU says
        # GenuineIntel family 6, and a Linux built with the early microcode loader
        # (CONFIG_MICROCODE_EARLY) probes MSRs in startup_32, before lguest_entry.
        # Reading zeroes (and dropping writes) lets that loader find nothing to do,
        # as on a CPU without an update.  Once the Guest has a #GP gate it gets the
        # #GP, as it did on the real Host (rdmsr_safe).
        op2 = _rd8(cpu, physaddr + 1)
        if op2 == 0x32:                    # rdmsr: edx:eax = 0
            ui.eax = 0
            ui.edx = 0
            ui.eip = eip + 2
            return True
        if op2 == 0x30:                    # wrmsr: ignored
            ui.eip = eip + 2
            return True
    insnlen = 0
    small = False
    if insn == 0x66:                       # operand-size prefix: 16-bit in/out
        small = True
        insnlen = 1
        insn = _rd8(cpu, physaddr + 1)
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
        eax = ui.eax
        if insn & 1:
            eax = (eax | 0xFFFF) if small else 0xFFFFFFFF
        else:
            eax |= 0xFF
        ui.eax = eax
    ui.eip = eip + insnlen
    return True


def _peek_byte(cpu, vaddr):
    """The byte at Guest-virtual vaddr, or None; never kills (unlike guest_pa())."""
    pa = page_tables.lookup_pa(cpu, vaddr)
    return cpu.mem[pa] if pa is not None and 0 <= pa < cpu.mem_limit else None


def _rd8(cpu, addr):
    if 0 <= addr < cpu.mem_limit:
        return cpu.mem[addr]
    cpu.kill_guest("bad read address %#x len %u" % (addr & 0xFFFFFFFF, 1))
    return 0


def reload_segments(cpu):
    """After the GDT changed, reload %ds/%es/%fs/%gs from it, as the Switcher did on
    every entry; a selector that no longer loads kills with the Switcher's words."""
    cpu.gdt_changed = False
    ui = cpu.ui
    for seg in ("ds", "es", "fs", "gs"):
        sel = getattr(ui, seg)
        if sel & ~3 and ui.load_seg(seg, sel):
            cpu.kill_guest("unhandled trap 256 at %#x (%#x)" % (ui.eip, 0))
            return


def memory_death(cpu):
    """Turn unicorn's memory error (Exit.MEMORY_FAULT) into the kill the real Host would
    have given.

    unicorn names the *physical* address.  Past NEW_PGTABLE the Guest reached it through
    its own tables, through an entry the real Host refused in demand_page() ("bad page
    table entry" and friends: page_tables.bad_entry_reason()).
    """
    access, paddr = cpu.fault if cpu.fault else (None, None)
    cpu.fault = None
    if paddr is not None and not cpu.linear_pages and paddr >= cpu.mem_limit:
        cpu.kill_guest(page_tables.bad_entry_reason(cpu, paddr))
        return
    where = paddr if paddr is not None else cpu.ui.eip
    if access in (UCC.UC_MEM_WRITE_UNMAPPED, UCC.UC_MEM_WRITE_PROT):
        cpu.kill_guest("bad write address %#x len %u" % (where, 4))
    else:
        cpu.kill_guest("bad read address %#x len %u" % (where, 4))
