"""The Guest's CPU: the unicorn engine, the Host-private pages, the boot register state.

Host-private memory sits at a high physical address, far above anything the Launcher
can give the Guest, in a unicorn region mapped read-only from a Host buffer:

  page 0  the linear page directory the Guest boots on (4 MiB PSE pages, 1:1 over its
          memory) whose top slot points at page 1
  page 1  the "Switcher" page table for the top 4 MiB: maps page 2 at SWITCHER_ADDR,
          read-only, and a zero page at the very top (unicorn peeks at the page before
          emu_start's "until" address; a mapped one keeps it from faulting)
  page 2  the GDT (32 entries)
  page 3  zeroes
  page 4  PAE: the Switcher's page table for the lower 2 MiB of the top 4 MiB (page 2
          at SWITCHER_ADDR)
  page 5  PAE: the page table for the upper 2 MiB (page 3 at the very top)
  page 6  PAE: a PMD page whose last two entries point at pages 4 and 5, lent to a
          PAE Guest whose top PGD entry is empty

unicorn reads the GDT through the Guest's page tables, so every page directory the
Guest installs gets page 1 in its top slot, and a PAE Guest gets pages 4 and 5 in the
last two entries of the PMD page its top PGD entry points at
(page_tables.install_switcher()).  A Guest store there faults (read-only PTE); a Guest
PTE pointing into this region still can't write it (read-only region): unicorn stops
with a memory error and the Guest dies.  Accessed bits are preset everywhere so the CPU
never needs to write these pages.
"""

import ctypes

from unicorn import UC_ARCH_X86, UC_MODE_32, UC_PROT_ALL, UC_PROT_READ, Uc
from unicorn import x86_const as X

from .abi import (EFER_NX, GDT_ENTRIES, GUEST_CS, GUEST_DS, GUEST_PL, MSR_EFER, PAGE_SIZE,
                  PTRS_PER_PTE_PAE, SWITCHER_ADDR, SWITCHER_PMD_INDEX, X86_CR0_ET, X86_CR0_MP,
                  X86_CR0_NE, X86_CR0_PE, X86_CR0_PG, X86_CR0_WP, X86_CR4_OSFXSR,
                  X86_CR4_OSXMMEXCPT, X86_CR4_PSE, X86_EFLAGS_FIXED, X86_EFLAGS_IF)

# The control registers the Guest really ran under were its Linux Host's: protected mode
# and paging with WP, the FPU in native-error mode, and SSE enabled by the Host (the
# Guest's own write_cr4() was a no-op, so without these its fxsave and SSE would #UD).
HOST_CR0 = X86_CR0_PE | X86_CR0_MP | X86_CR0_ET | X86_CR0_NE | X86_CR0_WP | X86_CR0_PG
HOST_CR4 = X86_CR4_OSFXSR | X86_CR4_OSXMMEXCPT
from .ucinternals import UcInternals

HOST_PAGES = 7
HOST_PHYS = 0x100000000 - HOST_PAGES * PAGE_SIZE      # 0xFFFF9000
LINEAR_PD = HOST_PHYS
SWITCHER_PT = HOST_PHYS + PAGE_SIZE
GDT_PHYS = HOST_PHYS + 2 * PAGE_SIZE
ZERO_PHYS = HOST_PHYS + 3 * PAGE_SIZE
SWITCHER_PT_PAE_LO = HOST_PHYS + 4 * PAGE_SIZE
SWITCHER_PT_PAE_HI = HOST_PHYS + 5 * PAGE_SIZE
SWITCHER_PMD_PAE = HOST_PHYS + 6 * PAGE_SIZE

# PDE/PTE flag sets.  P|RW|A|D (+PS): supervisor, so Guest user space can't see them.
_PDE_HOST = 0x063
_PDE_LINEAR = 0x0E7      # P|RW|U|A|D|PS: the boot mapping is the Guest's to use freely
_PTE_RO = 0x061          # P|A|D, not writable
_PGD_PAE = 0x001         # a PAE top-level entry may hold nothing but P


class HostPages:
    """The Host-private pages (see the module comment).  .words is a u32 view of all of
    them; .gdt is the u32 view of the GDT page (2 words per descriptor).

    The entries the Host puts into Guest tables: .switcher_pde (u32, the top slot of a
    non-PAE page directory), .switcher_pmds (two u64, PMD entries SWITCHER_PMD_INDEX
    and the one after it) and .lent_pgd (u64, a PAE top slot pointing at page 6).
    """

    def __init__(self, uc, pfn_limit):
        self._buf = (ctypes.c_char * (HOST_PAGES * PAGE_SIZE))()
        self.words = memoryview(self._buf).cast("B").cast("I")
        uc.mem_map_ptr(HOST_PHYS, HOST_PAGES * PAGE_SIZE, UC_PROT_READ,
                       ctypes.addressof(self._buf))
        w = self.words
        pd0 = (LINEAR_PD - HOST_PHYS) // 4
        # 1:1 over the Guest's memory, in 4 MiB pages (never reaching the top slot).
        for i in range(min((pfn_limit * PAGE_SIZE + (1 << 22) - 1) >> 22, 1023)):
            w[pd0 + i] = (i << 22) | _PDE_LINEAR
        self.switcher_pde = SWITCHER_PT | _PDE_HOST
        w[pd0 + 1023] = self.switcher_pde
        pt0 = (SWITCHER_PT - HOST_PHYS) // 4
        w[pt0 + 0] = GDT_PHYS | _PTE_RO
        w[pt0 + 1023] = ZERO_PHYS | _PTE_RO
        g0 = (GDT_PHYS - HOST_PHYS) // 4
        self.gdt = w[g0:g0 + 2 * GDT_ENTRIES]
        # PAE: 64-bit entries, the high word of each zero (all of this is below 4 GiB).
        self.switcher_pmds = (SWITCHER_PT_PAE_LO | _PDE_HOST, SWITCHER_PT_PAE_HI | _PDE_HOST)
        self.lent_pgd = SWITCHER_PMD_PAE | _PGD_PAE
        w[(SWITCHER_PT_PAE_LO - HOST_PHYS) // 4] = GDT_PHYS | _PTE_RO
        w[(SWITCHER_PT_PAE_HI - HOST_PHYS) // 4 + 2 * (PTRS_PER_PTE_PAE - 1)] = ZERO_PHYS | _PTE_RO
        pmd0 = (SWITCHER_PMD_PAE - HOST_PHYS) // 4
        w[pmd0 + 2 * SWITCHER_PMD_INDEX] = self.switcher_pmds[0]
        w[pmd0 + 2 * (SWITCHER_PMD_INDEX + 1)] = self.switcher_pmds[1]


def make_engine(base, pfn_limit):
    """A 32-bit engine with the Guest's memory (Launcher mapping at base) at physical 0."""
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map_ptr(0, pfn_limit * PAGE_SIZE, UC_PROT_ALL, base)
    ui = UcInternals(uc)
    return uc, ui


def enable_nx(uc):
    """Set EFER.NXE, so bit 63 of a PAE entry forbids instruction fetches (without it
    the bit is reserved and any use of the entry faults).  A PAE Linux Host on NX
    hardware ran with it set, and its shadow entries kept the Guest's bit 63."""
    uc.reg_write(X.UC_X86_REG_MSR, (MSR_EFER, EFER_NX))


def setup_regs(uc, ui, start):
    """The Guest's first register state; mirrors lguest_arch_setup_regs().

    Ring 1 with the flat DPL-1 kernel segments, eflags IF|fixed, eip = start, every other
    register 0 (esi = 0 is the boot_params address).  Paging is on from the first
    instruction, through the linear map; the GDT is the Host's at SWITCHER_ADDR.
    """
    uc.reg_write(X.UC_X86_REG_GDTR, (0, SWITCHER_ADDR, GDT_ENTRIES * 8 - 1, 0))
    uc.reg_write(X.UC_X86_REG_CR3, LINEAR_PD)
    uc.reg_write(X.UC_X86_REG_CR4, HOST_CR4 | X86_CR4_PSE)
    uc.reg_write(X.UC_X86_REG_CR0, HOST_CR0)
    # QEMU derives the privilege level from %ss and will only load an %ss of the current
    # level: set the level first, then the segments.
    ui.cpl = GUEST_PL
    for reg in (X.UC_X86_REG_SS, X.UC_X86_REG_DS, X.UC_X86_REG_ES):
        uc.reg_write(reg, GUEST_DS)
    uc.reg_write(X.UC_X86_REG_CS, GUEST_CS)
    uc.reg_write(X.UC_X86_REG_FS, 0)
    uc.reg_write(X.UC_X86_REG_GS, 0)
    for reg in (X.UC_X86_REG_EAX, X.UC_X86_REG_EBX, X.UC_X86_REG_ECX, X.UC_X86_REG_EDX,
                X.UC_X86_REG_ESI, X.UC_X86_REG_EDI, X.UC_X86_REG_EBP, X.UC_X86_REG_ESP):
        uc.reg_write(reg, 0)
    uc.reg_write(X.UC_X86_REG_EFLAGS, X86_EFLAGS_IF | X86_EFLAGS_FIXED)
    uc.reg_write(X.UC_X86_REG_EIP, start)
    ui.verify_live()
