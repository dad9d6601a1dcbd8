"""Page tables (mirrors the parts of drivers/lguest/page_tables.c that still make sense).

The real Host kept "shadow" page tables: it could not let the CPU walk the Guest's own
tables, because they hold Guest-physical addresses.  unicorn's CPU can: Guest-physical
address N *is* unicorn physical address N (the Launcher's mapping is mapped at 0).  So
the CPU walks the Guest's own tables directly, two-level or (PAE) three-level, and what
is left for the Host is:

  * the linear (1:1) mapping the Guest boots on, until its first LHCALL_NEW_PGTABLE;
  * the Switcher's place: the top 4 MiB of every address space the Guest installs maps
    the Host's GDT (the top page-directory slot; under PAE the last two entries of the
    PMD page under the top PGD entry: see install_switcher());
  * telling unicorn's TLB when translations change (SET_PTE, SET_PGD, SET_PMD,
    FLUSH_TLB and NEW_PGTABLE: all the Guest tells us, as it told the real Host to fix
    its shadows);
  * the checks the real Host made as it copied entries into its shadows ("bad page
    directory entry" and friends), made where we get to see the entries;
  * guest_pa() and friends: walks in Python for the Host's own accesses (trap frames,
    emulation, the checks in core.py).

Two kinds of Guest, one Host
----------------------------
A Linux Host learnt the kind of its Guests when it was built: drivers/lguest used the
Host's own page-table types, so a CONFIG_X86_PAE Host ran only PAE Guests (its CPU ran
them with CR4.PAE set) and a non-PAE Host only non-PAE ones.  We learn it at run time,
from what the Guest does: the first table it hands to NEW_PGTABLE, where its own tables
first come into play, is either a PAE pgd or a page directory (_looks_like_pdpt()).  We
set CR4.PAE (and EFER.NXE) to match and keep the answer for good; from then on cpu.pae
says which layout every walk here uses.
"""

import struct

from .abi import (_PAGE_PRESENT, _PAGE_PSE, _PAGE_RW, _PAGE_TABLE, PAGE_SIZE, PGDIR_SHIFT_PAE,
                  PMD_SHIFT, PTE_PFN_MASK_PAE, PTRS_PER_PGD, PTRS_PER_PGD_PAE, PTRS_PER_PMD,
                  SWITCHER_ADDR, SWITCHER_PGD_INDEX, SWITCHER_PGD_INDEX_PAE,
                  SWITCHER_PMD_INDEX, X86_CR4_PAE, X86_CR4_PSE)
from .cpu import enable_nx

_PMD_PAGE = struct.Struct("<%dQ" % PTRS_PER_PMD)

# One mask finds the frame in both kinds of entry: a non-PAE entry is below 2**32.
PFN_MASK = PTE_PFN_MASK_PAE
# Bits a PAE top-level entry can't have (Intel's "reserved" PDPTE bits: RW, US, A, D, PS
# and G; and everything above the physical address bits, NX included).
_PDPTE_RESERVED = 0x1E6 | ~(PTE_PFN_MASK_PAE | 0xFFF) & 0xFFFFFFFFFFFFFFFF


def flush_tlb(cpu):
    """Throw away every cached translation (LHCALL_FLUSH_TLB, a new page table)."""
    cpu.tlb_flush()


# --- walking the Guest's tables --------------------------------------------------------

def guest_pa(cpu, vaddr):
    """Guest-virtual -> Guest-physical through the current page tables.

    Returns the physical address; kills "Bad address %#lx" (and returns 0) when the
    page is not present.  Mirrors guest_pa() in page_tables.c: like it, it looks only
    at the present bits, not at the U/S or R/W permissions.
    """
    if cpu.linear_pages:
        return vaddr
    if cpu.pae:
        pgd = cpu.read_u64(cpu.pgdir + (vaddr >> PGDIR_SHIFT_PAE) * 8)
        if pgd & _PAGE_PRESENT:
            pmd = cpu.read_u64((pgd & PFN_MASK) + ((vaddr >> PMD_SHIFT) & 511) * 8)
            if pmd & _PAGE_PRESENT:
                pte = cpu.read_u64((pmd & PFN_MASK) + ((vaddr >> 12) & 511) * 8)
                if pte & _PAGE_PRESENT:
                    return (pte & PFN_MASK) | (vaddr & 0xFFF)
        cpu.kill_guest("Bad address %#x" % vaddr)
        return 0
    pgd = cpu.read_u32(cpu.pgdir + (vaddr >> 22) * 4)
    if not pgd & _PAGE_PRESENT:
        cpu.kill_guest("Bad address %#x" % vaddr)
        return 0
    pte = cpu.read_u32((pgd & 0xFFFFF000) + ((vaddr >> 12) & 0x3FF) * 4)
    if not pte & _PAGE_PRESENT:
        cpu.kill_guest("Bad address %#x" % vaddr)
        return 0
    return (pte & 0xFFFFF000) | (vaddr & 0xFFF)


def lookup_pte(cpu, vaddr):
    """The Guest's entries for vaddr without killing anything: (upper, pte), where upper
    is the entry that points at the page table (the page-directory entry, or under PAE
    the PMD entry: 0 if the PGD entry above it is not present); pte is 0 when there is
    no page table to read.  None while the Guest runs on the linear map, or when the
    top-level entry is outside Guest memory."""
    if cpu.linear_pages:
        return None
    if cpu.pae:
        pgdaddr = cpu.pgdir + (vaddr >> PGDIR_SHIFT_PAE) * 8
        if not cpu.address_ok(pgdaddr, 8):
            return None
        pgd = cpu.u64_at(pgdaddr)
        if not pgd & _PAGE_PRESENT:
            return (0, 0)
        pmdaddr = (pgd & PFN_MASK) + ((vaddr >> PMD_SHIFT) & 511) * 8
        if not cpu.address_ok(pmdaddr, 8):
            return (0, 0)
        pmd = cpu.u64_at(pmdaddr)
        if not pmd & _PAGE_PRESENT:
            return (pmd, 0)
        pteaddr = (pmd & PFN_MASK) + ((vaddr >> 12) & 511) * 8
        if not cpu.address_ok(pteaddr, 8):
            return (pmd, 0)
        return (pmd, cpu.u64_at(pteaddr))
    pgdaddr = cpu.pgdir + (vaddr >> 22) * 4
    if not cpu.address_ok(pgdaddr, 4):
        return None
    pgd = cpu.u32_at(pgdaddr)
    if not pgd & _PAGE_PRESENT:
        return (pgd, 0)
    pteaddr = (pgd & 0xFFFFF000) + ((vaddr >> 12) & 0x3FF) * 4
    if not cpu.address_ok(pteaddr, 4):
        return (pgd, 0)
    return (pgd, cpu.u32_at(pteaddr))


def lookup_pa(cpu, vaddr):
    """Guest-virtual -> Guest-physical, or None where nothing is mapped; never kills
    (unlike guest_pa()).  The physical address may lie outside Guest memory."""
    if cpu.linear_pages:
        return vaddr
    ent = lookup_pte(cpu, vaddr)
    if ent is None or not ent[0] & _PAGE_PRESENT or not ent[1] & _PAGE_PRESENT:
        return None
    return (ent[1] & PFN_MASK) | (vaddr & 0xFFF)


def physical_alias(cpu, gpa):
    """A Guest-virtual address the CPU can use right now to reach Guest-physical gpa.

    Returns None if there is none we can find cheaply: before NEW_PGTABLE it is gpa
    itself; afterwards Linux maps all of its low memory at kernel_address + gpa.
    """
    if cpu.linear_pages:
        return gpa
    if cpu.kernel_address is None:
        return None
    vaddr = cpu.kernel_address + gpa
    if vaddr >= SWITCHER_ADDR:
        return None
    pa = lookup_pa(cpu, vaddr)
    if pa is None or (pa & ~0xFFF) != (gpa & ~0xFFF):
        return None
    return vaddr


# --- which kind of Guest ----------------------------------------------------------------

def _looks_like_pdpt(cpu, top):
    """Is the table at top a PAE page-directory-pointer table?

    Read as PAE, its four 64-bit entries must be usable ones: at least one present, and
    every present one free of the bits a PDPTE can't have (a CPU refuses such a table
    when CR3 is loaded).  Read as a non-PAE page directory, that is eight entries of
    which every present one is read-only, supervisor-only and never accessed, with
    nothing but zeroes above the first 44 physical address bits: no Linux page
    directory looks like that (its entries all carry _PAGE_RW and _PAGE_ACCESSED).
    """
    if not cpu.address_ok(top, 8 * PTRS_PER_PGD_PAE):
        return False
    present = False
    for i in range(PTRS_PER_PGD_PAE):
        e = cpu.u64_at(top + 8 * i)
        if e & _PAGE_PRESENT:
            if e & _PDPTE_RESERVED:
                return False
            present = True
    return present


# --- the checks of demand_page() ---------------------------------------------------------

def _gpgd_ok(cpu, pgd):
    """check_gpgd() for a present PAE top-level entry: _PAGE_PRESENT is the only flag
    allowed (CHECK_GPGD_MASK), the PMD page must be Guest memory.  The Host's own entry
    (lent by install_switcher()) passes."""
    if pgd == cpu.host.lent_pgd:
        return True
    return not (pgd & ~PFN_MASK & ~_PAGE_PRESENT) and ((pgd & PFN_MASK) >> 12) < cpu.pfn_limit


def _gpmd_ok(cpu, pmd):
    """check_gpmd(): a present PMD entry carries no flag beyond _PAGE_TABLE (no large
    page, no NX) and its page table is Guest memory."""
    return not (pmd & ~PFN_MASK & ~_PAGE_TABLE) and ((pmd & PFN_MASK) >> 12) < cpu.pfn_limit


def check_fault(cpu, vaddr):
    """The checks demand_page() made on every fault, before the fault goes to the Guest:
    a present upper-level entry with odd flags, or pointing outside Guest memory, kills
    "bad page directory entry" / "bad page middle directory entry" (unicorn just read
    zeroes there and called it a not-present page).  Returns False if it killed."""
    if cpu.linear_pages or vaddr >= SWITCHER_ADDR:
        return True               # the Host's own slot: a plain fault for the Guest
    if cpu.pae:
        pgd = cpu.read_u64(cpu.pgdir + (vaddr >> PGDIR_SHIFT_PAE) * 8)
        if not pgd & _PAGE_PRESENT or pgd == cpu.host.lent_pgd:
            return cpu.dead is None
        if not _gpgd_ok(cpu, pgd):
            cpu.kill_guest("bad page directory entry")
            return False
        pmd = cpu.u64_at((pgd & PFN_MASK) + ((vaddr >> PMD_SHIFT) & 511) * 8)
        if pmd & _PAGE_PRESENT and not _gpmd_ok(cpu, pmd):
            cpu.kill_guest("bad page middle directory entry")
            return False
        return True
    pgd = cpu.read_u32(cpu.pgdir + (vaddr >> 22) * 4)
    if pgd & 1 and ((pgd & 0xFFF) & ~_PAGE_TABLE or (pgd >> 12) >= cpu.pfn_limit):
        cpu.kill_guest("bad page directory entry")
        return False
    return True


def bad_entry_reason(cpu, paddr):
    """The Guest reached physical paddr (outside its memory) through its own tables:
    which entry did it?  The words demand_page() would have died with.

    unicorn reads a missing page table as zeroes, so only the last step of a walk
    reaches past memory: a page-table entry, or under PAE a 2 MiB PMD entry.
    """
    frame = paddr & ~0xFFF
    top = cpu.pgdir
    if not cpu.pae:
        for i in range(PTRS_PER_PGD):
            pgd = cpu.u32_at(top + 4 * i)
            if pgd & 1 and (pgd & 0xFFFFF000) == frame and i != SWITCHER_PGD_INDEX:
                return "bad page directory entry"
        return "bad page table entry"
    host = cpu.host
    for i in range(PTRS_PER_PGD_PAE):
        pgd = cpu.u64_at(top + 8 * i)
        if not pgd & _PAGE_PRESENT or pgd == host.lent_pgd:
            continue
        base = pgd & PFN_MASK
        if base == frame:
            return "bad page directory entry"
        if not cpu.address_ok(base, PAGE_SIZE):
            continue
        for pmd in _PMD_PAGE.unpack_from(cpu.mem, base):
            if not pmd & _PAGE_PRESENT or pmd in host.switcher_pmds:
                continue
            big = pmd & PFN_MASK & ~((1 << PMD_SHIFT) - 1)
            if (pmd & PFN_MASK) == frame or (pmd & _PAGE_PSE
                                              and big <= paddr < big + (1 << PMD_SHIFT)):
                return "bad page middle directory entry"
    return "bad page table entry"


# --- the Switcher's place ------------------------------------------------------------------

def install_switcher(cpu, top):
    """Make the top 4 MiB of the address space at top map the Host's GDT page.

    As map_switcher_in_guest() did for the shadow tables, except that here the tables
    are the Guest's own pages.  Linux keeps out of the top 4 MiB because LGUEST_INIT
    told it to (reserve_mem), so it loses nothing.

    Non-PAE: the top page-directory slot points at the Host's page table.
    PAE: the 4 MiB are the last two entries of the PMD page under the top PGD entry, so
    that is where the Host's two page tables go: into the Guest's own kernel PMD page,
    the one every Linux process shares (SHARED_KERNEL_PMD), so one write serves every
    directory.  The Guest sees two entries appear where it was told to leave room, as a
    non-PAE Guest sees its top slot filled; the rest of its PMD page is its own.  Only if
    the top PGD entry is empty does the Host lend a PMD page of its own there.

    Returns True if anything changed (the caller flushes the TLB when it must).
    """
    if cpu.pae:
        return _install_switcher_pae(cpu, top)
    slot = top + SWITCHER_PGD_INDEX * 4
    if cpu.address_ok(slot, 4) and cpu.u32_at(slot) != cpu.host.switcher_pde:
        cpu.write_u32(slot, cpu.host.switcher_pde)
        return True
    return False


def _install_switcher_pae(cpu, top):
    slot = top + SWITCHER_PGD_INDEX_PAE * 8
    if not cpu.address_ok(slot, 8):
        return False
    host = cpu.host
    pgd = cpu.u64_at(slot)
    if not pgd & _PAGE_PRESENT:
        cpu.write_u64(slot, host.lent_pgd)
        return True
    if pgd == host.lent_pgd:
        return False
    pmds = (pgd & PFN_MASK) + SWITCHER_PMD_INDEX * 8
    if not cpu.address_ok(pmds, 16):
        return False              # a bad entry: the Guest dies of it when it uses it
    changed = False
    for i, want in enumerate(host.switcher_pmds):
        if cpu.u64_at(pmds + 8 * i) != want:
            cpu.write_u64(pmds + 8 * i, want)
            changed = True
    return changed


def check_switcher(cpu):
    """Before running: make sure the current tables still map the Host's GDT."""
    if not cpu.linear_pages and install_switcher(cpu, cpu.pgdir):
        cpu.tlb_flush()


def pin_stack_pages(cpu):
    """Make sure the kernel stack for traps from ring 3 is mapped and writable.

    Mirrors pin_stack_pages()/pin_page(): the real Host faulted the pages in so the CPU
    could push a trap frame; we check the Guest's tables say they are there and kill
    "bad stack page %#lx" if not, as pin_page() did when demand_page() failed.
    """
    if cpu.linear_pages:
        return
    for i in range(cpu.stack_pages):
        vaddr = (cpu.esp1 - 1 - i * PAGE_SIZE) & 0xFFFFFFFF
        ent = lookup_pte(cpu, vaddr)
        if (ent is None or not ent[0] & _PAGE_PRESENT or not ent[1] & _PAGE_PRESENT
                or not ent[1] & _PAGE_RW):
            cpu.kill_guest("bad stack page %#x" % vaddr)
            return
        if ((ent[1] & PFN_MASK) >> 12) >= cpu.pfn_limit:
            cpu.kill_guest("bad page table entry")
            return


# --- the hypercalls ------------------------------------------------------------------------

def guest_new_pagetable(cpu, pgtable):
    """LHCALL_NEW_PGTABLE: switch to the Guest page directory (or PAE pgd) at pgtable.

    Mirrors guest_new_pagetable(): the first call drops the linear mapping for good,
    and (our addition) tells us which kind of Guest this is.  A directory we have not
    seen before gets its stack pages checked (the real Host's "repin" of a fresh
    shadow).
    """
    if cpu.pae:
        _new_pagetable_pae(cpu, pgtable)
        return
    if not cpu.address_ok(pgtable & 0xFFFFF000, PAGE_SIZE):
        # The real Host would have died reading the first entry: same words.
        cpu.kill_guest("bad read address %#x len %u" % (pgtable, 4))
        return
    if cpu.linear_pages and _looks_like_pdpt(cpu, pgtable & ~0x1F):
        # The Guest's first tables are PAE: from now on so is our CPU (CR4.PAE, set in
        # _new_pagetable_pae) and every walk here.
        cpu.pae = True
        enable_nx(cpu.uc)
        _new_pagetable_pae(cpu, pgtable)
        return
    pgtable &= 0xFFFFF000
    was_linear = cpu.linear_pages
    cpu.linear_pages = False
    cpu.pgdir = pgtable
    install_switcher(cpu, pgtable)
    repin = pgtable not in cpu.known_pgdirs
    if repin:
        cpu.known_pgdirs.add(pgtable)
    cpu.set_cr3(pgtable)
    if was_linear:
        # The Guest's own tables are plain 4 KiB tables: PSE was only for our 1:1 map.
        cpu.set_cr4(cpu.cr4 & ~X86_CR4_PSE)
    if repin:
        pin_stack_pages(cpu)


def _new_pagetable_pae(cpu, pgtable):
    """NEW_PGTABLE for a PAE Guest: pgtable is a 32-byte aligned pgd of four entries."""
    top = pgtable & 0xFFFFFFE0
    if not cpu.address_ok(top, 8 * PTRS_PER_PGD_PAE):
        cpu.kill_guest("bad read address %#x len %u" % (pgtable, 8))
        return
    repin = top not in cpu.known_pgdirs
    if repin:
        # The real Host checked each entry as it first shadowed through it; without
        # shadows a new pgd is where we first see them (and there are only four).
        for i in range(PTRS_PER_PGD_PAE):
            pgd = cpu.u64_at(top + 8 * i)
            if pgd & _PAGE_PRESENT and not _gpgd_ok(cpu, pgd):
                cpu.kill_guest("bad page directory entry")
                return
        cpu.known_pgdirs.add(top)
    was_linear = cpu.linear_pages
    cpu.linear_pages = False
    cpu.pgdir = top
    install_switcher(cpu, top)
    cpu.set_cr3(top)
    if was_linear:
        cpu.set_cr4((cpu.cr4 & ~X86_CR4_PSE) | X86_CR4_PAE)
    if repin:
        pin_stack_pages(cpu)


def guest_set_pgd(cpu, gpgdir, idx):
    """LHCALL_SET_PGD: a top-level entry changed; mirrors guest_set_pgd().

    The check is "idx > PTRS_PER_PGD", one past the end, exactly as 3.16 had it (4
    entries under PAE, where gpgdir is the 32-byte aligned pgd).
    """
    if cpu.pae:
        _set_pgd_pae(cpu, gpgdir, idx)
        return
    if idx > PTRS_PER_PGD:
        cpu.kill_guest("Attempt to set pgd %u/%u" % (idx, PTRS_PER_PGD))
        return
    if idx == SWITCHER_PGD_INDEX and (gpgdir & 0xFFFFF000) in cpu.known_pgdirs:
        # "That might have been the Switcher mapping, remap it."
        install_switcher(cpu, gpgdir & 0xFFFFF000)
    cpu.tlb_flush()


def _set_pgd_pae(cpu, gpgdir, idx):
    if idx > PTRS_PER_PGD_PAE:
        cpu.kill_guest("Attempt to set pgd %u/%u" % (idx, PTRS_PER_PGD_PAE))
        return
    top = gpgdir & 0xFFFFFFE0
    slot = top + idx * 8
    if idx < PTRS_PER_PGD_PAE and cpu.address_ok(slot, 8):
        # The real Host met this entry at the Guest's next fault through it; we see
        # it now, and may not see it again (the CPU walks it without asking us).
        pgd = cpu.u64_at(slot)
        if pgd & _PAGE_PRESENT and not _gpgd_ok(cpu, pgd):
            cpu.kill_guest("bad page directory entry")
            return
    if idx == SWITCHER_PGD_INDEX_PAE and top in cpu.known_pgdirs:
        install_switcher(cpu, top)
    cpu.tlb_flush()


def guest_set_pmd(cpu, pmdp, idx):
    """LHCALL_SET_PMD: a PAE Guest changed entry idx of the PMD page at pmdp.

    Mirrors guest_set_pmd(), which threw every shadow away (guest_pagetable_clear_all):
    for us that is a TLB flush, the Switcher entries put back if the Guest wrote over
    them, and the stack pages checked again.  A non-PAE Host had no such call: from a
    non-PAE Guest it is "Bad hypercall 13", as it was then.  The new entry is checked
    here, where we first see it ("bad page middle directory entry"); the real Host did
    it as it first shadowed through it.  (3.16 ignored idx; one out of range we ignore
    too.)
    """
    if not cpu.pae:
        cpu.kill_guest("Bad hypercall %li" % 13)
        return
    if idx < PTRS_PER_PMD:
        slot = (pmdp & 0xFFFFF000) + idx * 8
        if cpu.address_ok(slot, 8):
            pmd = cpu.u64_at(slot)
            if (pmd & _PAGE_PRESENT and not _gpmd_ok(cpu, pmd)
                    and pmd not in cpu.host.switcher_pmds):
                cpu.kill_guest("bad page middle directory entry")
                return
    if idx >= SWITCHER_PMD_INDEX:
        install_switcher(cpu, cpu.pgdir)
    cpu.tlb_flush()
    pin_stack_pages(cpu)


def guest_set_pte(cpu, gpgdir, vaddr, pte):
    """LHCALL_SET_PTE: one entry changed; mirrors guest_set_pte().  (A PAE Guest passes
    the entry's high half as a fourth argument; a flush needs neither.)

    The real Host dropped that one shadow entry; we drop unicorn's TLB entries for that
    one page.  (The page directory may not be the current one, but kernel page tables
    are shared by all of them, so the page goes either way: it is cheap.)
    """
    if vaddr >= SWITCHER_ADDR:
        cpu.kill_guest("attempt to set pte into Switcher pages")
        return
    cpu.tlb_flush_page(vaddr)
