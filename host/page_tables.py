"""Page tables (mirrors the parts of drivers/lguest/page_tables.c that still make sense).

The real Host kept "shadow" page tables: it could not let the CPU walk the Guest's own
tables, because they hold Guest-physical addresses.  unicorn's CPU can: Guest-physical
address N *is* unicorn physical address N (the Launcher's mapping is mapped at 0).  So
the CPU walks the Guest's non-PAE two-level tables directly, and what is left for the
Host is:

  * the linear (1:1) mapping the Guest boots on, until its first LHCALL_NEW_PGTABLE;
  * the Switcher's place: the top page-directory slot of every page directory the
    Guest installs points at the Host's page table, which maps the Host's GDT;
  * telling unicorn's TLB when translations change (SET_PTE, SET_PGD, FLUSH_TLB and
    NEW_PGTABLE: all the Guest tells us, as it told the real Host to fix its shadows);
  * guest_pa(): a walk in Python for the Host's own accesses (trap frames, emulation).
"""

from .abi import (_PAGE_PRESENT, _PAGE_RW, PAGE_SIZE, PTRS_PER_PGD, SWITCHER_ADDR,
                  SWITCHER_PGD_INDEX, X86_CR4_PSE)


def flush_tlb(cpu):
    """Throw away every cached translation."""
    cpu.tlb_flush()


def guest_pa(cpu, vaddr):
    """Guest-virtual -> Guest-physical through the current page tables.

    Returns the physical address; kills "Bad address %#lx" (and returns 0) when the
    page is not present.  Mirrors guest_pa() in page_tables.c: like it, it looks only
    at the present bits, not at the U/S or R/W permissions.
    """
    if cpu.linear_pages:
        return vaddr
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
    """The Guest's (pde, pte) for vaddr without killing anything; None if absent."""
    if cpu.linear_pages:
        return None
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


def install_switcher(cpu, gpgdir):
    """Put the Host's page table in the top slot of Guest page directory gpgdir.

    As map_switcher_in_guest() did for the shadow tables, except that here the page
    directory is the Guest's own page.  Linux keeps out of the top 4 MiB because
    LGUEST_INIT told it to (reserve_mem), so it loses nothing.
    """
    slot = gpgdir + SWITCHER_PGD_INDEX * 4
    if cpu.address_ok(slot, 4):
        cpu.write_u32(slot, cpu.host.switcher_pde)


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
        if (ent[1] >> 12) >= cpu.pfn_limit:
            cpu.kill_guest("bad page table entry")
            return


def guest_new_pagetable(cpu, pgtable):
    """LHCALL_NEW_PGTABLE: switch to the Guest page directory at pgtable.

    Mirrors guest_new_pagetable(): the first call drops the linear mapping for good.
    A directory we have not seen before gets its stack pages checked (the real Host's
    "repin" of a fresh shadow).
    """
    if not cpu.address_ok(pgtable & 0xFFFFF000, PAGE_SIZE):
        # The real Host would have died reading the first entry: same words.
        cpu.kill_guest("bad read address %#x len %u" % (pgtable, 4))
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


def guest_set_pgd(cpu, gpgdir, idx):
    """LHCALL_SET_PGD: a top-level entry changed; mirrors guest_set_pgd().

    The check is "idx > PTRS_PER_PGD", one past the end, exactly as 3.16 had it.
    """
    if idx > PTRS_PER_PGD:
        cpu.kill_guest("Attempt to set pgd %u/%u" % (idx, PTRS_PER_PGD))
        return
    if idx == SWITCHER_PGD_INDEX and (gpgdir & 0xFFFFF000) in cpu.known_pgdirs:
        # "That might have been the Switcher mapping, remap it."
        install_switcher(cpu, gpgdir & 0xFFFFF000)
    cpu.tlb_flush()


def guest_set_pte(cpu, gpgdir, vaddr, pte):
    """LHCALL_SET_PTE: one entry changed; mirrors guest_set_pte().

    The real Host dropped that one shadow entry; we drop unicorn's TLB entries for
    that one page.  (The page directory may not be the current one, but kernel page
    tables are shared by all of them, so the page goes either way: it is cheap.)
    """
    if vaddr >= SWITCHER_ADDR:
        cpu.kill_guest("attempt to set pte into Switcher pages")
        return
    cpu.tlb_flush_page(vaddr)


def check_switcher(cpu):
    """Before running: make sure the current directory still maps the Host's GDT."""
    if not cpu.linear_pages:
        slot = cpu.pgdir + SWITCHER_PGD_INDEX * 4
        if cpu.u32_at(slot) != cpu.host.switcher_pde:
            cpu.write_u32(slot, cpu.host.switcher_pde)
            cpu.tlb_flush()


def physical_alias(cpu, gpa):
    """A Guest-virtual address the CPU can use right now to reach Guest-physical gpa.

    Returns None if there is none we can find cheaply: before NEW_PGTABLE it is gpa
    itself; afterwards Linux maps all of physical memory at kernel_address + gpa.
    """
    if cpu.linear_pages:
        return gpa
    if cpu.kernel_address is None:
        return None
    vaddr = cpu.kernel_address + gpa
    if vaddr >= SWITCHER_ADDR:
        return None
    ent = lookup_pte(cpu, vaddr)
    if ent is None or not ent[0] & _PAGE_PRESENT or not ent[1] & _PAGE_PRESENT:
        return None
    if (ent[1] & 0xFFFFF000) != (gpa & 0xFFFFF000):
        return None
    return vaddr
