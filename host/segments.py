"""Segments: the Guest's GDT, kept by the Host (mirrors drivers/lguest/segments.c).

The Guest never gets to load a GDT of its own: it hands us entries one at a time
(LHCALL_LOAD_GDT_ENTRY) or three TLS entries at once (LHCALL_LOAD_TLS), we fix them up
and copy them into the GDT the CPU actually uses.  That table lives in Host-private
memory mapped read-only at the top of the Guest's address space (see cpu.HostPages),
so the Guest can neither read it through a writable mapping nor scribble on it.

A few entries are ours, whatever the Guest says: the TSS, the two LGUEST segments the
Switcher used, and the double-fault TSS.
"""

from .abi import (FULL_EXEC_SEGMENT, FULL_SEGMENT, GDT_ENTRIES, GDT_ENTRY_DOUBLEFAULT_TSS,
                  GDT_ENTRY_KERNEL_CS, GDT_ENTRY_KERNEL_DS, GDT_ENTRY_LGUEST_CS,
                  GDT_ENTRY_LGUEST_DS, GDT_ENTRY_TLS_ENTRIES, GDT_ENTRY_TLS_MAX,
                  GDT_ENTRY_TLS_MIN, GDT_ENTRY_TSS, GUEST_PL)


def ignored_gdt(num):
    """Entries the Guest may not set; mirrors ignored_gdt()."""
    return num in (GDT_ENTRY_TSS, GDT_ENTRY_LGUEST_CS, GDT_ENTRY_LGUEST_DS,
                   GDT_ENTRY_DOUBLEFAULT_TSS)


def fixup_gdt_table(cpu, start, end):
    """Raise DPL 0 to GUEST_PL and preset the accessed bit; mirrors fixup_gdt_table().

    The accessed bit matters doubly here: the CPU would try to set it in a GDT that is
    mapped read-only, which is a fault nobody could explain to the Guest.
    """
    gdt = cpu.gdt
    for i in range(start, end):
        if ignored_gdt(i):
            continue
        hi = gdt[2 * i + 1]
        if (hi & 0x6000) == 0:
            hi |= GUEST_PL << 13
        gdt[2 * i + 1] = hi | 0x100


def setup_default_gdt_entries(cpu):
    """The entries that are the same for every Guest; mirrors setup_default_gdt_entries().

    There is no hardware task switch in our Host (traps come to Python), so the TSS
    descriptor only keeps the slot looking as it did: a present 32-bit TSS, busy bit clear.
    """
    gdt = cpu.gdt
    gdt[2 * GDT_ENTRY_LGUEST_CS], gdt[2 * GDT_ENTRY_LGUEST_CS + 1] = FULL_EXEC_SEGMENT
    gdt[2 * GDT_ENTRY_LGUEST_DS], gdt[2 * GDT_ENTRY_LGUEST_DS + 1] = FULL_SEGMENT
    gdt[2 * GDT_ENTRY_LGUEST_CS + 1] |= 0x100
    gdt[2 * GDT_ENTRY_LGUEST_DS + 1] |= 0x100
    gdt[2 * GDT_ENTRY_TSS] = 0x00000067
    gdt[2 * GDT_ENTRY_TSS + 1] = 0x00008900


def setup_guest_gdt(cpu):
    """The two flat DPL-1 segments the Guest boots with; mirrors setup_guest_gdt()."""
    gdt = cpu.gdt
    for num, (lo, hi) in ((GDT_ENTRY_KERNEL_CS, FULL_EXEC_SEGMENT),
                          (GDT_ENTRY_KERNEL_DS, FULL_SEGMENT)):
        gdt[2 * num] = lo
        gdt[2 * num + 1] = hi | (GUEST_PL << 13) | 0x100


def load_guest_gdt_entry(cpu, num, lo, hi):
    """LHCALL_LOAD_GDT_ENTRY; mirrors load_guest_gdt_entry().  Kills on num >= 32."""
    if num >= GDT_ENTRIES:
        cpu.kill_guest("too many gdt entries %i" % _s32(num))
        return
    if ignored_gdt(num):
        # The real Host stored them in its private copy but never copied them to the
        # CPU's GDT: the effect is that they are ignored.
        return
    cpu.gdt[2 * num] = lo
    cpu.gdt[2 * num + 1] = hi
    fixup_gdt_table(cpu, num, num + 1)
    cpu.gdt_changed = True


def guest_load_tls(cpu, gtls):
    """LHCALL_LOAD_TLS: three descriptors at Guest-physical gtls; mirrors guest_load_tls()."""
    data = cpu.lgread(gtls, 8 * GDT_ENTRY_TLS_ENTRIES)
    gdt = cpu.gdt
    for i in range(GDT_ENTRY_TLS_ENTRIES):
        n = GDT_ENTRY_TLS_MIN + i
        gdt[2 * n] = int.from_bytes(data[8 * i:8 * i + 4], "little")
        gdt[2 * n + 1] = int.from_bytes(data[8 * i + 4:8 * i + 8], "little")
    fixup_gdt_table(cpu, GDT_ENTRY_TLS_MIN, GDT_ENTRY_TLS_MAX + 1)
    cpu.gdt_changed = True


def _s32(v):
    return v - (1 << 32) if v & 0x80000000 else v
