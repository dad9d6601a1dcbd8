/*
 * tests.c: the test modes (lgtest=NAME[,NAME...] or lgtest=all) and the
 * table of every mode, ours and the drivers'.
 *
 * Each test returns 1 (PASS) or 0 (FAIL, with why filled in) and prints any
 * figures it measured on a line of its own first.  Our tests check the Host
 * from the inside: every hypercall with an effect we can see, the async
 * ring, interrupt delivery rules, the clock, page faults and ring 3.
 */
#include "core.h"
#include "virtio.h"
#include "tests.h"
#if __has_include("blk.h")
#include "blk.h"
#endif

/* The drivers' tests: weak, so the core builds and runs without them. */
#pragma weak test_blk_read
#pragma weak test_blk_write
#pragma weak test_blk_stress
#pragma weak test_net
int test_blk_bench(char *why, size_t whylen) __attribute__((weak));

#define FAIL(...) do { snprintf(why, whylen, __VA_ARGS__); return 0; } while (0)

/* The hypercall behind set_pmd(): the top level without PAE, SET_PMD with. */
#ifdef CONFIG_X86_PAE
#define SET_PMD_NAME "SET_PMD"
#else
#define SET_PMD_NAME "SET_PGD"
#endif

/* ---- helpers: catching a trap we provoke on purpose ---- */

/* While set, a trap on expect_vector is counted, its error code, irq_enabled
 * and frame recorded, and eip moved past the faulting instruction. */
static volatile struct {
	unsigned int vector, skip, count;
	u32 err, irq_enabled, frame_eflags, via_vector;
	void (*fix)(void);		/* instead of skipping: make it retry */
} expect;

static int expected_trap(struct pt_regs *regs)
{
	expect.count++;
	expect.err = regs->error_code;
	expect.irq_enabled = lguest_data.irq_enabled;
	expect.frame_eflags = regs->eflags;
	expect.via_vector = regs->vector;
	if (expect.fix)
		expect.fix();
	else
		regs->eip += expect.skip;
	return 1;
}

static trap_fn expect_trap(unsigned int vector, unsigned int skip)
{
	expect.vector = vector;
	expect.skip = skip;
	expect.count = 0;
	expect.fix = NULL;
	return set_trap_handler(vector, expected_trap);
}

/* Instructions of known length that trap. */
static inline void do_ud2(void) { asm volatile("ud2" ::: "memory"); }		/* 2 bytes */
static inline void do_div0(void)						/* 2 bytes */
{
	u32 a = 1, d = 0, zero = 0;
	asm volatile("divl %2" : "+a"(a), "+d"(d) : "c"(zero) : "memory");
}

static u32 read_via_fs(void)
{
	u32 v;
	asm volatile("movl %%fs:0, %0" : "=r"(v));
	return v;
}

static void load_fs(u32 sel) { asm volatile("movl %0, %%fs" :: "r"(sel) : "memory"); }
static void load_gs(u32 sel) { asm volatile("movl %0, %%gs" :: "r"(sel) : "memory"); }

static u32 read_via_gs(void)
{
	u32 v;
	asm volatile("movl %%gs:0, %0" : "=r"(v));
	return v;
}

static u32 peek(u32 addr) { return *(volatile u32 *)addr; }
static void poke(u32 addr, u32 v) { *(volatile u32 *)addr = v; }

/* A fresh page of the demand window for each use, so tests don't collide. */
static u32 next_window = DEMAND_BASE;
static u32 window_pages(unsigned int n)
{
	u32 v = next_window;

	if (next_window + n * PAGE_SIZE > DEMAND_END)
		panic("tests: demand window used up");
	next_window += n * PAGE_SIZE;
	return v;
}

/* ---- lgtest hcall ---- */

#define PERCPU_ENTRY 27		/* a GDT entry Linux uses for its own data */

static volatile u32 probe[4] = { 0x11111111, 0x22222222, 0x33333333, 0x44444444 };

static int fpu_nm_fix_count;
static void clear_ts(void)
{
	fpu_nm_fix_count++;
	hcall(LHCALL_TS, 0, 0, 0, 0);	/* lguest_clts, then retry */
}

static int test_hcall(char *why, size_t whylen)
{
	u32 pa_a, pa_b, va;
	pte_t *pte;
	u8 *a, *b;
	trap_fn old;

	/* LGUEST_INIT (made in head.S): the Host filled in its fields. */
	if (lguest_data.reserve_mem == 0 || (lguest_data.reserve_mem & 0xFFF))
		FAIL("LGUEST_INIT: reserve_mem %#x", lguest_data.reserve_mem);
	if (lguest_data.time_sec == 0)
		FAIL("LGUEST_INIT: no time in lguest_data");

	/* LOAD_GDT_ENTRY: a data segment based at probe[0], DPL 0 as Linux
	 * writes it (the Host makes it 1), loaded into %fs; then rebased. */
	old = expect_trap(13, 2);	/* mov %reg, %fs is 2 bytes */
	lguest_load_gdt_entry(PERCPU_ENTRY, make_seg_lo((u32)&probe[0], 0xFFFFF),
			      make_seg_hi((u32)&probe[0], 0xFFFFF, 0x93));
	load_fs(PERCPU_ENTRY * 8 + 1);
	set_trap_handler(13, old);
	if (expect.count)
		FAIL("LOAD_GDT_ENTRY: loading the segment gave #GP %#x (DPL not fixed?)", expect.err);
	if (read_via_fs() != probe[0])
		FAIL("LOAD_GDT_ENTRY: %%fs:0 = %#x, not %#x", read_via_fs(), probe[0]);
	lguest_load_gdt_entry(PERCPU_ENTRY, make_seg_lo((u32)&probe[1], 0xFFFFF),
			      make_seg_hi((u32)&probe[1], 0xFFFFF, 0x93));
	load_fs(PERCPU_ENTRY * 8 + 1);
	if (read_via_fs() != probe[1])
		FAIL("LOAD_GDT_ENTRY: rebased %%fs:0 = %#x, not %#x", read_via_fs(), probe[1]);
	load_fs(0);

	/* LOAD_TLS: GDT entries 6..8 from three descriptors in memory. */
	{
		static u32 tls[6];
		tls[2] = make_seg_lo((u32)&probe[2], 0xFFFFF);
		tls[3] = make_seg_hi((u32)&probe[2], 0xFFFFF, 0xF3);
		lguest_load_tls(tls);
		hcall(LHCALL_FLUSH_ASYNC, 0, 0, 0, 0);	/* LOAD_TLS may be batched */
		load_gs((GDT_ENTRY_TLS_MIN + 1) * 8 + 3);
		if (read_via_gs() != probe[2])
			FAIL("LOAD_TLS: %%gs:0 = %#x, not %#x", read_via_gs(), probe[2]);
		load_gs(0);
	}

	/* SET_PTE: map a page, read it, remap the same address to another
	 * page: we must see the new one (the Host drops the old translation). */
	a = alloc_pages(1);
	b = alloc_pages(1);
	if (!a || !b)
		FAIL("out of memory");
	pa_a = __pa(a);
	pa_b = __pa(b);
	*(u32 *)a = 0xAAAA0001;
	*(u32 *)b = 0xBBBB0002;
	va = window_pages(1);
	map_page(swapper_pg_dir, va, pa_a, _PAGE_RW);
	if (peek(va) != 0xAAAA0001)
		FAIL("SET_PTE: new mapping reads %#x", peek(va));
	map_page(swapper_pg_dir, va, pa_b, _PAGE_RW);
	if (peek(va) != 0xBBBB0002)
		FAIL("SET_PTE: remapped page still reads %#x (stale TLB)", peek(va));

	/* FLUSH_TLB(1): change the PTE behind the Host's back, then flush. */
	pte = lookup_pte(swapper_pg_dir, va, 0);
	*pte = pa_a | _PAGE_PRESENT | _PAGE_RW | _PAGE_ACCESSED | _PAGE_DIRTY;
	flush_tlb_all();
	if (peek(va) != 0xAAAA0001)
		FAIL("FLUSH_TLB(1): still reads %#x", peek(va));

	/* SET_PGD (with PAE: SET_PMD): swap the page table under a user-half
	 * region (4 MiB; with PAE 2 MiB), and FLUSH_TLB(0) for a user-half PTE
	 * written behind the Host's back. */
	{
		pte_t *pt1 = alloc_pages(1), *pt2 = alloc_pages(1);
		u32 uva = 0x40000000u;
		if (!pt1 || !pt2)
			FAIL("out of memory");
		pt1[0] = pa_a | _PAGE_PRESENT | _PAGE_RW | _PAGE_ACCESSED | _PAGE_DIRTY;
		pt2[0] = pa_b | _PAGE_PRESENT | _PAGE_RW | _PAGE_ACCESSED | _PAGE_DIRTY;
		set_pmd(swapper_pg_dir, uva, __pa(pt1) | _KERNPG_TABLE);
		if (peek(uva) != 0xAAAA0001)
			FAIL(SET_PMD_NAME ": first table reads %#x", peek(uva));
		set_pmd(swapper_pg_dir, uva, __pa(pt2) | _KERNPG_TABLE);
		if (peek(uva) != 0xBBBB0002)
			FAIL(SET_PMD_NAME ": second table reads %#x", peek(uva));
		pt2[0] = pa_a | _PAGE_PRESENT | _PAGE_RW | _PAGE_ACCESSED | _PAGE_DIRTY;
		hcall(LHCALL_FLUSH_TLB, 0, 0, 0, 0);
		if (peek(uva) != 0xAAAA0001)
			FAIL("FLUSH_TLB(0): user mapping still reads %#x", peek(uva));

#ifdef CONFIG_X86_PAE
		/* SET_PGD: the top-level entry over uva to another PMD page,
		 * whose table maps uva elsewhere, and back. */
		{
			unsigned int pgi = uva >> PGDIR_SHIFT;
			pgd_t was = swapper_pg_dir[pgi];
			pmd_t *pmd2 = alloc_pages(1);
			pte_t *pt3 = alloc_pages(1);
			if (!pmd2 || !pt3)
				FAIL("out of memory");
			pt3[0] = pa_b | _PAGE_PRESENT | _PAGE_RW | _PAGE_ACCESSED | _PAGE_DIRTY;
			pmd2[0] = __pa(pt3) | _KERNPG_TABLE;
			set_pgd(swapper_pg_dir, pgi, __pa(pmd2) | PGD_IDENT_ATTR);
			if (peek(uva) != 0xBBBB0002)
				FAIL("SET_PGD: the new PMD page reads %#x", peek(uva));
			set_pgd(swapper_pg_dir, pgi, was);
			if (peek(uva) != 0xAAAA0001)
				FAIL("SET_PGD: the old PMD page again reads %#x", peek(uva));
		}
#endif

		/* NEW_PGTABLE: another page directory maps uva elsewhere. */
		pgd_t *pgdir = new_user_pgdir();
		if (!pgdir)
			FAIL("out of memory");
		map_page(pgdir, uva, pa_b, _PAGE_RW);
		load_pgdir(pgdir);
		u32 seen = peek(uva);
		load_pgdir(swapper_pg_dir);
		if (seen != 0xBBBB0002)
			FAIL("NEW_PGTABLE: the new directory reads %#x", seen);
		if (peek(uva) != 0xAAAA0001)
			FAIL("NEW_PGTABLE: back in swapper_pg_dir reads %#x", peek(uva));
		set_pmd(swapper_pg_dir, uva, 0);
	}

	/* LOAD_IDT_ENTRY: point #UD's gate at the bounds stub; ud2 must then
	 * arrive as vector 5. */
	old = expect_trap(5, 2);
	set_idt_gate(6, entry_stub(5), 0, 0);
	do_ud2();
	set_idt_gate(6, entry_stub(6), 0, 0);
	set_trap_handler(5, old);
	if (expect.count != 1)
		FAIL("LOAD_IDT_ENTRY: redirected #UD arrived %u times", expect.count);

	/* TS: with TS set the first FPU instruction traps (#NM); clear it and
	 * the instruction runs.  Without TS: no trap. */
	old = expect_trap(7, 0);
	expect.fix = clear_ts;
	fpu_nm_fix_count = 0;
	hcall(LHCALL_TS, 1, 0, 0, 0);
	asm volatile("fninit" ::: "memory");
	asm volatile("fninit" ::: "memory");
	set_trap_handler(7, old);
	if (expect.count != 1)
		FAIL("TS: %u #NM traps for two fninit with TS set once", expect.count);

	/* SET_CLOCKEVENT + HALT: a 20 ms sleep wakes by IRQ 0, and the clock
	 * moved on by about that much. */
	{
		u32 fired = timer_fired;
		u64 t0, t1;
		msleep(1);			/* a fresh timestamp */
		t0 = now_ns();
		msleep(20);
		t1 = now_ns();
		if (timer_fired < fired + 2)
			FAIL("SET_CLOCKEVENT: timer fired %u times, not 2", timer_fired - fired);
		if (t1 - t0 < 15000000ull)
			FAIL("HALT: woke after %u us for a 20 ms clock event", (u32)((t1 - t0) / 1000));
	}

	/* SET_STACK: a trap from ring 3 lands on the stack we named. */
	{
		u8 *stk = alloc_pages(2);
		struct user_result res;
		if (!stk)
			FAIL("out of memory");
		set_kernel_stack(stk, 2);
		run_user(user_hello_start, user_hello_end - user_hello_start, 0, &res);
		set_kernel_stack(trap_stack, sizeof(trap_stack) / PAGE_SIZE);
		if (res.kstack_seen < (u32)stk || res.kstack_seen >= (u32)stk + 2 * PAGE_SIZE)
			FAIL("SET_STACK: syscall frame at %#x, not in %p..+8k", res.kstack_seen, stk);
		if (!res.exited || res.code != 42)
			FAIL("SET_STACK: user program %s %d", res.exited ? "exited" : "killed by trap", res.code);
	}

	/* FLUSH_ASYNC: a queued call runs, and its slot is free again. */
	{
		unsigned int slot;
		for (slot = 0; slot < LHCALL_RING_SIZE; slot++)
			if (lguest_data.hcall_status[slot] != 0xFF)
				FAIL("FLUSH_ASYNC: slot %u busy before we start", slot);
		async_hcall(LHCALL_LOAD_GDT_ENTRY, PERCPU_ENTRY,
			    make_seg_lo((u32)&probe[3], 0xFFFFF),
			    make_seg_hi((u32)&probe[3], 0xFFFFF, 0x93), 0);
		hcall(LHCALL_FLUSH_ASYNC, 0, 0, 0, 0);
		for (slot = 0; slot < LHCALL_RING_SIZE; slot++)
			if (lguest_data.hcall_status[slot] != 0xFF)
				FAIL("FLUSH_ASYNC: slot %u still %#x", slot, lguest_data.hcall_status[slot]);
		load_fs(PERCPU_ENTRY * 8 + 1);
		if (read_via_fs() != probe[3]) {
			load_fs(0);
			FAIL("FLUSH_ASYNC: the queued LOAD_GDT_ENTRY did not run");
		}
		load_fs(0);
	}

	/* SEND_INTERRUPTS: an IRQ held back while disabled arrives when we
	 * enable by hand and ask for it. */
	{
		u32 count = irq_count[0], spins = 0;
		irq_disable();
		set_clockevent(1000000);
		while (!*(volatile u32 *)&lguest_data.irq_pending && ++spins < 0x10000000u)
			cpu_relax();
		if (irq_count[0] != count) {
			irq_enable();
			FAIL("SEND_INTERRUPTS: IRQ delivered while disabled");
		}
		lguest_data.irq_enabled = X86_EFLAGS_IF;
		hcall(LHCALL_SEND_INTERRUPTS, 0, 0, 0, 0);
		if (irq_count[0] != count + 1)
			FAIL("SEND_INTERRUPTS: pending IRQ not delivered (pending %#x)",
			     lguest_data.irq_pending);
	}

	/* What a hypercall costs, round trip (FLUSH_ASYNC does nothing else). */
	{
		u64 t0 = rdtsc64();
		for (int k = 0; k < 1000; k++)
			hcall(LHCALL_FLUSH_ASYNC, 0, 0, 0, 0);
		printk("hcall: round_trip_ns=%u\n", tsc_to_ns(rdtsc64() - t0) / 1000);
	}

	/* NOTIFY of a string: the early console, checked from outside. */
	{
		static const char note[] = "hcall: NOTIFY early console works\n";
		early_puts(note, sizeof(note) - 1);
	}
	return 1;
}

/* ---- lgtest async ---- */

static int test_async(char *why, size_t whylen)
{
	static volatile u32 vals[80];
	static const char note[] = "async: NOTIFY from the ring\n";
	u32 va = window_pages(1);
	u8 *a = alloc_pages(1), *b = alloc_pages(1);
	unsigned int i, queued = 0;

	if (!a || !b)
		FAIL("out of memory");
	*(u32 *)a = 0xA5A5A5A5;
	*(u32 *)b = 0x5A5A5A5A;
	for (i = 0; i < ARRAY_SIZE(vals); i++)
		vals[i] = 0xC0DE0000 + i;

	/* Batch more calls than the ring holds: the 65th finds its slot still
	 * pending and goes synchronously, flushing the ring first.  Each one
	 * rebases the same GDT entry, and a SET_PTE flips va between two
	 * pages: only in-order execution leaves the last of each. */
	lazy_mmu_enter();
	for (i = 0; i < ARRAY_SIZE(vals); i++) {
		async_hcall(LHCALL_LOAD_GDT_ENTRY, PERCPU_ENTRY,
			    make_seg_lo((u32)&vals[i], 0xFFFFF),
			    make_seg_hi((u32)&vals[i], 0xFFFFF, 0x93), 0);
		map_page(swapper_pg_dir, va, __pa(i & 1 ? b : a), _PAGE_RW);
		queued += 2;
		if (i == 40)	/* a NOTIFY in the ring: the Host stops there */
			async_hcall(LHCALL_NOTIFY, __pa(note), 0, 0, 0);
	}
	lazy_mmu_leave();

	for (i = 0; i < LHCALL_RING_SIZE; i++)
		if (lguest_data.hcall_status[i] != 0xFF)
			FAIL("slot %u status %#x after FLUSH_ASYNC", i, lguest_data.hcall_status[i]);
	load_fs(PERCPU_ENTRY * 8 + 1);
	if (read_via_fs() != vals[ARRAY_SIZE(vals) - 1]) {
		u32 got = read_via_fs();
		load_fs(0);
		FAIL("GDT entry ended at %#x, not the last queued %#x", got,
		     vals[ARRAY_SIZE(vals) - 1]);
	}
	load_fs(0);
	if (peek(va) != 0x5A5A5A5A)
		FAIL("last SET_PTE not in effect: reads %#x", peek(va));
	printk("async: calls=%u ring=%u\n", queued + 1, LHCALL_RING_SIZE);
	return 1;
}

/* ---- lgtest irq ---- */

static u32 spin_per_ms;

/* Spin (interrupts can come) until the timer count moves or we give up. */
static int spin_until_timer(u32 start, u32 max_loops)
{
	for (u32 n = 0; n < max_loops; n++) {
		if (irq_count[0] != start)
			return 1;
		cpu_relax();
	}
	return 0;
}

/* Calibrate a busy loop against the clock event: spin (interrupts enabled)
 * until a 20 ms timer fires. */
static int calibrate(void)
{
	u32 start = irq_count[0], n = 0;

	irq_enable();
	set_clockevent(20000000);
	while (irq_count[0] == start && n < 0x40000000u) {
		cpu_relax();
		n++;
	}
	if (irq_count[0] == start)
		return 0;
	spin_per_ms = n / 20;
	if (spin_per_ms < 1000)
		spin_per_ms = 1000;
	return 1;
}

static void busy_spin(u32 loops)
{
	for (u32 n = 0; n < loops; n++)
		cpu_relax();
}

static int test_irq(char *why, size_t whylen)
{
	u32 start, inside, blocked;
	trap_fn old;

	if (!calibrate())
		FAIL("a 20 ms timer never interrupted a busy loop");
	printk("irq: spin_per_ms=%u\n", spin_per_ms);

	/* Disabled: the IRQ is held back and irq_pending set.  Only IRQ 0 may set
	 * it here: a device's interrupt (the C Launcher's threads send theirs
	 * whenever they finish a buffer) would end the wait before the timer. */
	blocked = lguest_data.blocked_interrupts;
	lguest_data.blocked_interrupts = ~1u;
	irq_disable();
	lguest_data.irq_pending = 0;
	start = irq_count[0];
	set_clockevent(2000000);
	for (u32 n = 0; n < spin_per_ms * 200 && !*(volatile u32 *)&lguest_data.irq_pending; n++)
		cpu_relax();
	if (irq_count[0] != start)
		FAIL("IRQ delivered with irq_enabled = 0");
	if (!lguest_data.irq_pending)
		FAIL("irq_pending never set for a held-back IRQ");
	/* Enabling: irq_pending makes us SEND_INTERRUPTS, delivered at once. */
	irq_enable();
	inside = irq_count[0];
	lguest_data.blocked_interrupts = blocked;
	if (inside != start + 1)
		FAIL("SEND_INTERRUPTS did not deliver the pending IRQ (%u)", inside - start);

	/* blocked_interrupts holds back just that IRQ, even when enabled. */
	lguest_data.blocked_interrupts |= 1;
	start = irq_count[0];
	set_clockevent(2000000);
	busy_spin(spin_per_ms * 30);
	inside = irq_count[0];
	lguest_data.blocked_interrupts &= ~1u;
	if (inside != start)
		FAIL("blocked IRQ 0 was delivered");
	hcall(LHCALL_SEND_INTERRUPTS, 0, 0, 0, 0);
	if (!spin_until_timer(start, spin_per_ms * 100))
		FAIL("IRQ 0 lost while blocked");

	/* The noirq window: nothing is delivered while eip is inside it.  We
	 * stay inside for 30 ms by the TSC, so a 5 ms timer armed just before
	 * fires while we are there; if we were held up getting in (a loaded
	 * machine) and it fired first, we try again. */
	if (!tsc_khz)
		FAIL("no TSC rate to time the noirq window with");
	for (int tries = 0;; tries++) {
		u32 entry;
		start = irq_count[0];
		set_clockevent(5000000);
		inside = noirq_spin(tsc_khz * 30, &entry);
		if (inside != entry)
			FAIL("IRQ delivered inside [noirq_start, noirq_end)");
		if (entry == start)
			break;		/* the timer fired inside the window */
		if (tries == 5)
			FAIL("the timer always fired before we entered the window");
	}
	hcall(LHCALL_SEND_INTERRUPTS, 0, 0, 0, 0);
	if (!spin_until_timer(start, spin_per_ms * 100))
		FAIL("IRQ held back by the noirq window never came");

	/* Interrupt gate vs trap gate: #DE through each. */
	old = expect_trap(0, 2);
	set_idt_gate(0, entry_stub(0), 0, 0);	/* interrupt gate */
	do_div0();
	if (expect.count != 1 || expect.irq_enabled != 0)
		FAIL("interrupt gate: %u traps, irq_enabled %#x in the handler",
		     expect.count, expect.irq_enabled);
	if (!(expect.frame_eflags & X86_EFLAGS_IF) || lguest_data.irq_enabled != X86_EFLAGS_IF)
		FAIL("interrupt gate: frame IF %#x, irq_enabled after iret %#x",
		     expect.frame_eflags & X86_EFLAGS_IF, lguest_data.irq_enabled);
	set_idt_gate(0, entry_stub(0), 1, 0);	/* trap gate */
	do_div0();
	if (expect.count != 2 || expect.irq_enabled != X86_EFLAGS_IF)
		FAIL("trap gate: irq_enabled %#x in the handler", expect.irq_enabled);
	/* With interrupts off, the frame says so and iret keeps them off. */
	irq_disable();
	do_div0();
	start = lguest_data.irq_enabled;
	irq_enable();
	set_idt_gate(0, entry_stub(0), 0, 0);	/* back to idt_init()'s gate */
	set_trap_handler(0, old);
	if ((expect.frame_eflags & X86_EFLAGS_IF) || start != 0)
		FAIL("disabled: frame IF %#x, irq_enabled after iret %#x",
		     expect.frame_eflags & X86_EFLAGS_IF, start);
	if (irq_nested)
		FAIL("%u interrupts arrived while interrupts were disabled", irq_nested);
	return 1;
}

/* ---- lgtest timer ---- */

static int test_timer(char *why, size_t whylen)
{
	u64 t0, t1;
	u32 ms;

	msleep(1);		/* lguest_data.time is fresh after an interrupt */
	t0 = now_ns();
	msleep(500);
	t1 = now_ns();
	ms = (u32)((t1 - t0) / 1000000ull);
	printk("timer: slept=%u ms\n", ms);
	/* Never (much) less than asked; late by no more than a loaded host's
	 * scheduler could make us.  How close it comes is for benchmarks. */
	if (ms < 490 || ms > 3000)
		FAIL("slept %u ms for 500", ms);
	return 1;
}

/* ---- lgtest pagefault ---- */

static u32 ro_va, ro_pa;
static void make_writable(void)
{
	map_page(swapper_pg_dir, ro_va, ro_pa, _PAGE_RW);
}

#ifdef CONFIG_X86_PAE
static u32 nx_va, nx_pa;
static void make_executable(void)
{
	map_page(swapper_pg_dir, nx_va, nx_pa, 0);
}
#endif

static int test_pagefault(char *why, size_t whylen)
{
	u32 base = window_pages(9), before = pf_count;
	unsigned int i;
	trap_fn old;
	u64 t0 = rdtsc64(), t_faults;

	/* Writes to eight untouched pages: one fault each, error 2 (write,
	 * not present, kernel), cr2 = the address. */
	for (i = 0; i < 8; i++) {
		u32 va = base + i * PAGE_SIZE + 4 * i;
		poke(va, 0xFACE0000 + i);
		if (pf_count != before + i + 1)
			FAIL("write %u: %u faults", i, pf_count - before);
		if (pf_last_cr2 != va || pf_last_err != 2)
			FAIL("write %u: cr2 %#x err %#x, wanted %#x err 2", i, pf_last_cr2, pf_last_err, va);
	}
	t_faults = rdtsc64() - t0;
	for (i = 0; i < 8; i++)
		if (peek(base + i * PAGE_SIZE + 4 * i) != 0xFACE0000 + i)
			FAIL("page %u lost its contents", i);
	/* A read: error 0, and a zeroed page. */
	if (peek(base + 8 * PAGE_SIZE + 8) != 0 || pf_last_err != 0 || pf_count != before + 9)
		FAIL("read fault: err %#x, %u faults", pf_last_err, pf_count - before);

	/* A write to a read-only page: a protection fault (error 3), which
	 * we fix by making it writable; the write then happens. */
	ro_va = window_pages(1);
	ro_pa = __pa(alloc_pages(1));
	map_page(swapper_pg_dir, ro_va, ro_pa, 0);
	old = expect_trap(14, 0);
	expect.fix = make_writable;
	poke(ro_va, 0x0DDBA11);
	set_trap_handler(14, old);
	if (expect.count != 1 || expect.err != 3)
		FAIL("write to a read-only page: %u faults, err %#x (CR0.WP?)", expect.count, expect.err);
	if (peek(ro_va) != 0x0DDBA11)
		FAIL("retried write lost");

#ifdef CONFIG_X86_PAE
	/* NX: a call into a readable page marked execute-disable faults with
	 * error 0x11 (present, instruction fetch) at the page itself, and
	 * runs once the bit is gone; reading it never faulted. */
	{
		u8 *code = alloc_pages(1);
		if (!code)
			FAIL("out of memory");
		code[0] = 0xB8;				/* movl $0x600DC0DE, %eax */
		*(u32 *)(code + 1) = 0x600DC0DE;
		code[5] = 0xC3;				/* ret */
		nx_va = window_pages(1);
		nx_pa = __pa(code);
		map_page(swapper_pg_dir, nx_va, nx_pa, _PAGE_NX);
		if (peek(nx_va) != *(u32 *)code)
			FAIL("NX: reading the page gives %#x", peek(nx_va));
		old = expect_trap(14, 0);
		expect.fix = make_executable;
		u32 got = ((u32 (*)(void))nx_va)();
		set_trap_handler(14, old);
		if (expect.count != 1 || expect.err != 0x11 || lguest_data.cr2 != nx_va)
			FAIL("NX: %u faults, err %#x, cr2 %#x", expect.count, expect.err,
			     lguest_data.cr2);
		if (got != 0x600DC0DE)
			FAIL("NX: the code returned %#x", got);
	}
#endif
	printk("pagefault: faults=%u ns_per_fault=%u\n", pf_count - before,
	       tsc_to_ns(t_faults) / 8);
	return 1;
}

/* ---- lgtest user ---- */

static int test_user(char *why, size_t whylen)
{
	static const char want[] = "hello from ring 3\nuser: stack and heap pages mapped on demand\n";
	struct user_result res;

	if (run_user(user_hello_start, user_hello_end - user_hello_start, 0, &res))
		FAIL("out of memory");
	printk("user: exit=%d faults=%u\n", res.code, res.faults);
	if (!res.exited)
		FAIL("killed by trap %d", res.code);
	if (res.code != 42)
		FAIL("exit(%d), wanted 42", res.code);
	if (strcmp(res.out, want))
		FAIL("wrote \"%s\"", res.out);
	/* Four stack pages (one from the first push, three walked) and one
	 * heap page, each faulted in exactly once. */
	if (res.faults != 5)
		FAIL("%u page faults for 4 stack pages and 1 heap page", res.faults);

	/* An interrupt while ring 3 runs: the Host switches to the SET_STACK
	 * stack, we handle it, and lguest_iret goes back to ring 3.  A loaded
	 * host may take more than the 2 ms to get us into ring 3, or keep us
	 * off the CPU for the whole spin: a few tries. */
	{
		u32 ticks = irq_count[0], from_user = irq_from_user;
		for (int tries = 0; tries < 10 && irq_from_user == from_user; tries++) {
			set_clockevent(2000000);
			if (run_user(user_spin_start, user_spin_end - user_spin_start, 0, &res))
				FAIL("out of memory");
			if (!res.exited || res.code != 7)
				FAIL("spinning process: %s %d", res.exited ? "exit" : "trap",
				     res.code);
		}
		if (irq_count[0] == ticks || irq_from_user == from_user)
			FAIL("no timer interrupt reached us while ring 3 spun (%u, %u from ring 3)",
			     irq_count[0] - ticks, irq_from_user - from_user);
	}

	/* Kernel memory is out of bounds for ring 3: the read faults (error
	 * 5: present, user) and the process dies. */
	if (run_user(user_kread_start, user_kread_end - user_kread_start, 0, &res))
		FAIL("out of memory");
	if (res.exited || res.code != 14 || pf_last_err != 5)
		FAIL("reading kernel memory from ring 3: %s %d, err %#x",
		     res.exited ? "exit" : "trap", res.code, pf_last_err);
	return 1;
}

/* ---- lgtest fpu ---- */

static int test_fpu(char *why, size_t whylen)
{
	trap_fn old = expect_trap(7, 0);
	u32 cw = 0;

	expect.fix = clear_ts;
	hcall(LHCALL_TS, 1, 0, 0, 0);
	asm volatile("fninit; fnstcw %0" : "=m"(cw) :: "memory");
	set_trap_handler(7, old);
	if (expect.count != 1)
		FAIL("%u #NM traps with TS set", expect.count);
	if ((cw & 0xFFFF) != 0x037F)
		FAIL("FPU control word %#x after fninit", cw & 0xFFFF);
	return 1;
}

/* ---- lgtest console ---- */

static int test_console(char *why, size_t whylen)
{
	char line[256];

	if (!console_up)
		FAIL("no virtio console");
	for (;;) {
		int n = virtio_console_readline(line, sizeof(line));
		if (n < 0)
			FAIL("input ended before quit");
		if (!strcmp(line, "quit"))
			return 1;
		printk("echo: %s\n", line);
	}
}

/* ---- lgtest lib: our freestanding C library against known answers ---- */

static int test_lib(char *why, size_t whylen)
{
	char buf[64];
	u64 big = 0x123456789ABCDEF0ull;
	volatile u64 d = 1000000007ull;	/* volatile: a real __udivdi3 call */

	if (crc32_update(0, "123456789", 9) != 0xCBF43926)
		FAIL("crc32(\"123456789\") = %08x", crc32_update(0, "123456789", 9));
	if (crc32_update(crc32_update(0, "1234", 4), "56789", 5) != 0xCBF43926)
		FAIL("crc32 in two parts differs");
	if (big / d != 1311768458ull || big % d != 281411114ull)
		FAIL("__udivdi3 = %llu, __umoddi3 = %llu", big / d, big % d);
	snprintf(buf, sizeof(buf), "%d|%5u|%08x|%#x|%s|%c|%llx|%lld", -42, 7u, 0xBEEFu, 255u,
		 "str", 'c', 0x1122334455667788ull, -5ll);
	if (strcmp(buf, "-42|    7|0000beef|0xff|str|c|1122334455667788|-5"))
		FAIL("snprintf gave \"%s\"", buf);
	if (snprintf(buf, 4, "%s", "truncated") != 9 || strcmp(buf, "tru"))
		FAIL("snprintf truncation gave \"%s\"", buf);
	{
		static u8 a[64], b[64];
		for (unsigned int k = 0; k < 64; k++)
			a[k] = k;
		memset(b, 0xEE, sizeof(b));
		memcpy(b + 3, a + 1, 13);		/* odd length, odd offsets */
		for (unsigned int k = 0; k < 64; k++) {
			u8 want = (k >= 3 && k < 16) ? a[k - 2] : 0xEE;
			if (b[k] != want)
				FAIL("memcpy/memset: b[%u] = %#x, not %#x", k, b[k], want);
		}
		memset(b + 1, 0, 6);
		if (b[0] != 0xEE || b[1] || b[6] || b[7] == 0)
			FAIL("memset of 6 bytes at offset 1");
		memmove(a + 2, a, 10);			/* overlapping, forwards */
		if (a[2] != 0 || a[11] != 9)
			FAIL("memmove overlap: %u %u", a[2], a[11]);
	}
	if (simple_strtoul("0x1f", NULL, 0) != 31 || simple_strtoul("017", NULL, 0) != 15
	    || simple_strtoul("123abc", NULL, 10) != 123)
		FAIL("simple_strtoul");
	return 1;
}

/* ---- the table ---- */

enum need { NONE, INPUT, BLOCK, BLOCK_RW, NET };

static const struct lgtest {
	const char *name;
	lgtest_fn fn;
	enum need need;
} lgtests[] = {
	{ "hcall", test_hcall, NONE },
	{ "async", test_async, NONE },
	{ "irq", test_irq, NONE },
	{ "timer", test_timer, NONE },
	{ "pagefault", test_pagefault, NONE },
	{ "user", test_user, NONE },
	{ "fpu", test_fpu, NONE },
	{ "lib", test_lib, NONE },
	{ "console", test_console, INPUT },
	{ "blk-read", test_blk_read, BLOCK },
	{ "blk-write", test_blk_write, BLOCK_RW },
	{ "blk-stress", test_blk_stress, BLOCK_RW },
	{ "blk-bench", test_blk_bench, BLOCK_RW },
	{ "net", test_net, NET },
};

static int passed, failed;

static void run_one(const struct lgtest *t)
{
	char why[200] = "";

	if (!t->fn) {
		printk("lgtest %s: FAIL not built into this kernel\n", t->name);
		failed++;
		return;
	}
	irq_enable();
	if (t->fn(why, sizeof(why))) {
		printk("lgtest %s: PASS\n", t->name);
		passed++;
	} else {
		printk("lgtest %s: FAIL %s\n", t->name, why);
		failed++;
	}
	irq_enable();
}

/* Why "all" leaves a test out, or NULL if it runs. */
static const char *skip_reason(const struct lgtest *t)
{
	struct vdev vd;
	char buf[64];

	switch (t->need) {
	case NONE:
		return NULL;
	case INPUT:
		return "needs console input";
	case NET:
		return "needs a network peer";
	case BLOCK:
		return virtio_find(VIRTIO_ID_BLOCK, 0, &vd) ? "no block device" : NULL;
	case BLOCK_RW:
		if (virtio_find(VIRTIO_ID_BLOCK, 0, &vd))
			return "no block device";
		return cmdline_get("lgblk", buf, sizeof(buf)) ? NULL : "needs lgblk=";
	}
	return NULL;
}

void run_tests(const char *list)
{
	const char *p = list;

	if (!strcmp(list, "all")) {
		for (unsigned int i = 0; i < ARRAY_SIZE(lgtests); i++) {
			const char *skip = skip_reason(&lgtests[i]);
			if (skip)
				printk("lgtest %s: SKIP %s\n", lgtests[i].name, skip);
			else
				run_one(&lgtests[i]);
		}
	} else {
		while (*p) {
			char name[32];
			size_t n = 0;
			unsigned int i;
			while (*p && *p != ',') {
				if (n + 1 < sizeof(name))
					name[n++] = *p;
				p++;
			}
			name[n] = '\0';
			if (*p == ',')
				p++;
			if (!n)
				continue;
			for (i = 0; i < ARRAY_SIZE(lgtests); i++)
				if (!strcmp(lgtests[i].name, name))
					break;
			if (i < ARRAY_SIZE(lgtests)) {
				run_one(&lgtests[i]);
			} else {
				printk("lgtest %s: FAIL no such test\n", name);
				failed++;
			}
		}
	}
	printk("lgtest: %d passed, %d failed\n", passed, failed);
}
