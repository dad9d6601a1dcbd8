/*
 * mm.c: memory.  A page allocator that never frees, the two-level (non-PAE)
 * page tables, and demand paging.
 *
 * Our page tables are ordinary memory the Host reads; what it needs from us
 * is to be told when we change them, as Linux's lguest paravirt MMU ops do:
 * SET_PTE after writing a PTE (lguest_pte_update), SET_PGD after writing a
 * top-level entry (lguest_set_pmd), NEW_PGTABLE to switch (lguest_write_cr3),
 * FLUSH_TLB to flush.  Like Linux's, all of these are "lazy": between
 * lazy_mmu_enter() and lazy_mmu_leave() they are queued in the async ring
 * instead of trapping, and the Host runs them in order at its next entry.
 */
#include "core.h"

u32 *current_pgdir = swapper_pg_dir;
static u32 next_free, free_end;		/* physical: the bump allocator */

/* Pages come from after the page tables head.S built up to the end of RAM
 * (the device pages above RAM belong to the Launcher). */
void mm_init(void)
{
	next_free = pgtable_brk;
	free_end = max_pfn << 12;
	if (free_end > mapped_end)
		free_end = mapped_end;
	if (reserve_top < DEMAND_END)
		panic("Host reserves too much: reserve_mem %#x", lguest_data.reserve_mem);
}

void *alloc_pages(unsigned int n)
{
	u32 flags = irq_save();
	void *p = NULL;

	if (n && n <= (free_end - next_free) / PAGE_SIZE) {
		p = __va(next_free);
		next_free += n * PAGE_SIZE;
	}
	irq_restore(flags);
	if (p)
		memset(p, 0, n * PAGE_SIZE);
	return p;
}

/* lguest_pte_update: which page directory, which address, the new entry. */
void set_pte(u32 *pgdir, u32 vaddr, u32 pte)
{
	u32 *ptep = lookup_pte(pgdir, vaddr, 1);

	*ptep = pte;
	lazy_hcall(LHCALL_SET_PTE, __pa(pgdir), vaddr & ~0xFFFu, pte, 0);
}

/* lguest_set_pmd: the page directory's physical page and the entry index. */
void set_pgd(u32 *pgdir, unsigned int index, u32 pde)
{
	pgdir[index] = pde;
	lazy_hcall(LHCALL_SET_PGD, __pa(pgdir), index, 0, 0);
}

/* The PTE for vaddr in pgdir, making the page table if asked. */
u32 *lookup_pte(u32 *pgdir, u32 vaddr, int create)
{
	unsigned int pdi = vaddr >> 22;
	u32 *pt;

	if (!(pgdir[pdi] & _PAGE_PRESENT)) {
		if (!create)
			return NULL;
		pt = alloc_pages(1);
		if (!pt)
			panic("out of memory for a page table");
		/* User half: user-accessible directory entries; the PTEs
		 * decide.  Kernel half: supervisor only. */
		set_pgd(pgdir, pdi, __pa(pt) | (vaddr < PAGE_OFFSET ? _PAGE_TABLE : _KERNPG_TABLE));
	}
	pt = __va(pgdir[pdi] & ~0xFFFu);
	return &pt[(vaddr >> 12) & 1023];
}

void map_page(u32 *pgdir, u32 vaddr, u32 paddr, u32 flags)
{
	set_pte(pgdir, vaddr, (paddr & ~0xFFFu) | flags | _PAGE_PRESENT | _PAGE_ACCESSED);
}

/* lguest_flush_tlb_kernel: everything, kernel mappings included. */
void flush_tlb_all(void)
{
	lazy_hcall(LHCALL_FLUSH_TLB, 1, 0, 0, 0);
}

/* lguest_write_cr3: switch page tables. */
void load_pgdir(u32 *pgdir)
{
	current_pgdir = pgdir;
	lazy_hcall(LHCALL_NEW_PGTABLE, __pa(pgdir), 0, 0, 0);
}

/* A process's page directory: the kernel half (PAGE_OFFSET up to the Host's
 * reservation) shared with swapper_pg_dir, the user half empty, and none of
 * head.S's identity mapping. */
u32 *new_user_pgdir(void)
{
	u32 *pgdir = alloc_pages(1);
	unsigned int i;

	if (!pgdir)
		return NULL;
	for (i = PAGE_OFFSET >> 22; i < (reserve_top >> 22); i++)
		pgdir[i] = swapper_pg_dir[i];
	return pgdir;
}

/*
 * Page faults.  The Host puts the faulting address in lguest_data.cr2
 * (lguest's read_cr2) and delivers trap 14 with the real error code (bit 0:
 * protection, bit 1: write, bit 2: user mode).  We map on demand:
 *  - the kernel's demand window [DEMAND_BASE, DEMAND_END) (our vmalloc);
 *  - user addresses in the current process's page directory;
 * anything else is a bug (kernel) or a segfault (user).
 */
volatile u32 pf_count, pf_last_cr2, pf_last_err;

int do_page_fault(struct pt_regs *regs)
{
	u32 addr = lguest_data.cr2;
	u32 *pgdir = current_pgdir;
	u32 *ptep;
	void *page;

	pf_count++;
	pf_last_cr2 = addr;
	pf_last_err = regs->error_code;
	if (regs->error_code & 1)	/* present: a protection fault */
		return 0;
	if (addr >= DEMAND_BASE && addr < DEMAND_END) {
		pgdir = swapper_pg_dir;		/* kernel mappings live there */
	} else if (addr >= PAGE_OFFSET || pgdir == swapper_pg_dir) {
		return 0;
	}
	page = alloc_pages(1);
	if (!page)
		return 0;
	ptep = lookup_pte(pgdir, addr, 1);
	(void)ptep;
	map_page(pgdir, addr, __pa(page),
		 _PAGE_RW | (addr < PAGE_OFFSET ? _PAGE_USER : 0) | _PAGE_DIRTY);
	/* A new kernel page table made in swapper_pg_dir must show in the
	 * process's directory too. */
	if (addr >= PAGE_OFFSET && current_pgdir != swapper_pg_dir &&
	    current_pgdir[addr >> 22] != swapper_pg_dir[addr >> 22])
		set_pgd(current_pgdir, addr >> 22, swapper_pg_dir[addr >> 22]);
	return 1;
}
