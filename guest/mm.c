/*
 * mm.c: memory.  A page allocator that never frees, the page tables (Linux's
 * two-level non-PAE ones, or with CONFIG_X86_PAE its three-level ones), and
 * demand paging.
 *
 * Our page tables are ordinary memory the Host reads; what it needs from us
 * is to be told when we change them, as Linux's lguest paravirt MMU ops do:
 * SET_PTE after writing a PTE (lguest_pte_update), SET_PGD after writing a
 * top-level entry (lguest_set_pmd; with PAE lguest_set_pud), SET_PMD after
 * writing a PAE middle-level one (lguest_set_pmd), NEW_PGTABLE to switch
 * (lguest_write_cr3), FLUSH_TLB to flush.  Like Linux's, all of these are "lazy": between
 * lazy_mmu_enter() and lazy_mmu_leave() they are queued in the async ring
 * instead of trapping, and the Host runs them in order at its next entry.
 */
#include "core.h"

pgd_t *current_pgdir = swapper_pg_dir;
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

/*
 * A 64-bit entry must never be seen half written: store the high half first
 * while the entry is still not present, as Linux's native_set_pte() does.
 */
static inline void write_entry(pte_t *p, pte_t v)
{
#ifdef CONFIG_X86_PAE
	volatile u32 *w = (volatile u32 *)p;

	w[0] = 0;
	w[1] = (u32)(v >> 32);
	w[0] = (u32)v;
#else
	*(volatile pte_t *)p = v;
#endif
}

static inline u32 entry_high(pte_t v)
{
#ifdef CONFIG_X86_PAE
	return (u32)(v >> 32);
#else
	(void)v;
	return 0;
#endif
}

/* lguest_pte_update: which top level, which address, the new entry (a PAE
 * Guest passes its high half as a fourth argument). */
void set_pte(pgd_t *pgdir, u32 vaddr, pte_t pte)
{
	pte_t *ptep = lookup_pte(pgdir, vaddr, 1);

	write_entry(ptep, pte);
	lazy_hcall(LHCALL_SET_PTE, __pa(pgdir), vaddr & ~0xFFFu, (u32)pte, entry_high(pte));
}

/* A top-level entry: lguest_set_pmd without PAE, lguest_set_pud with it
 * (whose pgd is 32-byte aligned: the Host gets that address). */
void set_pgd(pgd_t *pgdir, unsigned int index, pgd_t pgd)
{
	write_entry(&pgdir[index], pgd);
#ifdef CONFIG_X86_PAE
	lazy_hcall(LHCALL_SET_PGD, __pa(pgdir) & ~0x1Fu, index, 0, 0);
#else
	lazy_hcall(LHCALL_SET_PGD, __pa(pgdir), index, 0, 0);
#endif
}

/* The entry over vaddr's page table.  Without PAE it is the page directory
 * entry; with PAE the entry in the PMD page under pgdir[vaddr >> 30], which
 * we make (an empty PMD page) if asked. */
pmd_t *lookup_pmd(pgd_t *pgdir, u32 vaddr, int create)
{
#ifdef CONFIG_X86_PAE
	unsigned int pgi = vaddr >> PGDIR_SHIFT;
	pmd_t *pmd;

	if (!(pgdir[pgi] & _PAGE_PRESENT)) {
		if (!create)
			return NULL;
		pmd = alloc_pages(1);
		if (!pmd)
			panic("out of memory for a PMD page");
		set_pgd(pgdir, pgi, __pa(pmd) | PGD_IDENT_ATTR);
	}
	pmd = __va((u32)(pgdir[pgi] & PTE_PFN_MASK));
	return &pmd[(vaddr >> PMD_SHIFT) & (PTRS_PER_PMD - 1)];
#else
	(void)create;
	return &pgdir[vaddr >> PGDIR_SHIFT];
#endif
}

/* lguest_set_pmd: write the entry, then tell the Host which page and which
 * entry (a PAE Guest says SET_PMD; without PAE this is the top level). */
void set_pmd(pgd_t *pgdir, u32 vaddr, pmd_t pmd)
{
	pmd_t *pmdp = lookup_pmd(pgdir, vaddr, 1);

#ifdef CONFIG_X86_PAE
	write_entry(pmdp, pmd);
	lazy_hcall(LHCALL_SET_PMD, __pa(pmdp) & ~0xFFFu, (__pa(pmdp) & 0xFFF) / sizeof(pmd_t), 0, 0);
#else
	set_pgd(pgdir, pmdp - pgdir, pmd);
#endif
}

/* The PTE for vaddr in pgdir, making the page table (and PMD page) if asked. */
pte_t *lookup_pte(pgd_t *pgdir, u32 vaddr, int create)
{
	pmd_t *pmdp = lookup_pmd(pgdir, vaddr, create);
	pte_t *pt;

	if (!pmdp)
		return NULL;
	if (!(*pmdp & _PAGE_PRESENT)) {
		if (!create)
			return NULL;
		pt = alloc_pages(1);
		if (!pt)
			panic("out of memory for a page table");
		/* User half: user-accessible directory entries; the PTEs
		 * decide.  Kernel half: supervisor only. */
		set_pmd(pgdir, vaddr, __pa(pt) | (vaddr < PAGE_OFFSET ? _PAGE_TABLE : _KERNPG_TABLE));
	}
	pt = __va((u32)(*pmdp & PTE_PFN_MASK));
	return &pt[(vaddr >> 12) & (PTRS_PER_PTE - 1)];
}

void map_page(pgd_t *pgdir, u32 vaddr, u32 paddr, pte_t flags)
{
	set_pte(pgdir, vaddr, (paddr & ~0xFFFu) | flags | _PAGE_PRESENT | _PAGE_ACCESSED);
}

/* lguest_flush_tlb_kernel: everything, kernel mappings included. */
void flush_tlb_all(void)
{
	lazy_hcall(LHCALL_FLUSH_TLB, 1, 0, 0, 0);
}

/* lguest_write_cr3: switch page tables. */
void load_pgdir(pgd_t *pgdir)
{
	current_pgdir = pgdir;
	lazy_hcall(LHCALL_NEW_PGTABLE, __pa(pgdir), 0, 0, 0);
}

/* A process's page directory: the kernel half (PAGE_OFFSET up to the Host's
 * reservation) shared with swapper_pg_dir, the user half empty, and none of
 * head.S's identity mapping.  With PAE the kernel half is one top-level entry
 * and the PMD page under it is shared, Host entries and all (Linux's
 * SHARED_KERNEL_PMD). */
pgd_t *new_user_pgdir(void)
{
	pgd_t *pgdir = alloc_pages(1);
	unsigned int i;

	if (!pgdir)
		return NULL;
#ifdef CONFIG_X86_PAE
	for (i = PAGE_OFFSET >> PGDIR_SHIFT; i < PTRS_PER_PGD; i++)
		pgdir[i] = swapper_pg_dir[i];
#else
	for (i = PAGE_OFFSET >> PGDIR_SHIFT; i < (reserve_top >> PGDIR_SHIFT); i++)
		pgdir[i] = swapper_pg_dir[i];
#endif
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
	pgd_t *pgdir = current_pgdir;
	pte_t *ptep;
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
#ifndef CONFIG_X86_PAE
	/* A new kernel page table made in swapper_pg_dir must show in the
	 * process's directory too.  (With PAE the PMD page it went into is
	 * shared already.) */
	if (addr >= PAGE_OFFSET && current_pgdir != swapper_pg_dir &&
	    current_pgdir[addr >> 22] != swapper_pg_dir[addr >> 22])
		set_pgd(current_pgdir, addr >> 22, swapper_pg_dir[addr >> 22]);
#endif
	return 1;
}
