/*
 * boot.c: the lguest-specific start of our kernel, after head.S has built
 * page tables and jumped to the high addresses.  It mirrors
 * arch/x86/lguest/boot.c: lguest_data, the batched hypercalls, the GDT and
 * TLS through hypercalls, the clock from lguest_data.time, the one-shot
 * clock event, the early console, and power off / panic through SHUTDOWN.
 */
#include <stdarg.h>
#include "core.h"
#include "virtio.h"

/*
 * The page we share with the Host.  These fields must be right before the
 * first hypercall (LGUEST_INIT), which is why they are static initializers:
 * the Host reads noirq_start/noirq_end and kernel_address then, and the
 * async ring must be all free (0xFF).  The timer interrupt stays blocked
 * until we have a clock event handler, as in Linux.
 */
struct lguest_data lguest_data = {
	.hcall_status = { [0 ... LHCALL_RING_SIZE - 1] = 0xFF },
	.noirq_start = (u32)lguest_noirq_start,
	.noirq_end = (u32)lguest_noirq_end,
	.kernel_address = PAGE_OFFSET,
	.blocked_interrupts = 1,
	.syscall_vec = SYSCALL_VECTOR,
};

/* What startup_32 copied out of the zero page. */
u8 boot_params[PARAM_SIZE];
char boot_command_line[COMMAND_LINE_SIZE];
u32 ram_size;
u32 reserve_top;

/*
 * Batched hypercalls (async_hcall in boot.c).  In "lazy MMU mode" page
 * table updates don't trap at once: they go into the ring in lguest_data,
 * and the Host runs them, in order, the next time we enter it for any
 * reason.  If the ring is full the slot we want is still pending, so we
 * make the call synchronously, which first flushes the whole ring.
 */
static int lazy_mode;

void async_hcall(u32 call, u32 arg1, u32 arg2, u32 arg3, u32 arg4)
{
	static unsigned int next_call;
	u32 flags = irq_save();	/* an interrupt handler could queue too */
	volatile u8 *status = &lguest_data.hcall_status[next_call];

	if (*status != 0xFF) {
		hcall(call, arg1, arg2, arg3, arg4);
	} else {
		struct hcall_args *a = &lguest_data.hcalls[next_call];
		if (call < LHCALL_COUNTED)
			hcalls_queued[call]++;
		a->arg0 = call;
		a->arg1 = arg1;
		a->arg2 = arg2;
		a->arg3 = arg3;
		a->arg4 = arg4;
		barrier();	/* the arguments before the "go" */
		*status = 0;
		if (++next_call == LHCALL_RING_SIZE)
			next_call = 0;
	}
	irq_restore(flags);
}

void lazy_hcall(u32 call, u32 arg1, u32 arg2, u32 arg3, u32 arg4)
{
	if (lazy_mode)
		async_hcall(call, arg1, arg2, arg3, arg4);
	else
		hcall(call, arg1, arg2, arg3, arg4);
}

void lazy_mmu_enter(void)
{
	lazy_mode = 1;
}

/* lguest_leave_lazy_mmu_mode: the batch must be done before we go on. */
void lazy_mmu_leave(void)
{
	hcall(LHCALL_FLUSH_ASYNC, 0, 0, 0, 0);
	lazy_mode = 0;
}

/* Segment descriptors in the CPU's two-word format. */
u32 make_seg_lo(u32 base, u32 limit)
{
	return (base << 16) | (limit & 0xFFFF);
}

u32 make_seg_hi(u32 base, u32 limit, u32 access)
{
	return (base & 0xFF000000u) | 0x00C00000u	/* 4k granular, 32 bit */
		| (limit & 0xF0000u) | (access << 8) | ((base >> 16) & 0xFF);
}

void lguest_load_gdt_entry(unsigned int index, u32 lo, u32 hi)
{
	hcall(LHCALL_LOAD_GDT_ENTRY, index, lo, hi, 0);
}

/* LOAD_TLS: the Host copies three descriptors into GDT entries 6..8
 * (lguest_load_tls; lazy, as Linux makes it, since it happens on every
 * context switch). */
void lguest_load_tls(const u32 desc[6])
{
	lazy_hcall(LHCALL_LOAD_TLS, __pa(desc), 0, 0, 0);
}

/*
 * Our GDT, loaded the way lguest_load_gdt() loads Linux's: entry by entry.
 * The Host ignores the kernel entries (12, 13: it keeps its own ring-1
 * LGUEST_CS/LGUEST_DS) and the TSS; what matters to us are the user
 * segments at Linux's entries 14 and 15 (selectors 0x73 and 0x7b).
 */
static void gdt_init(void)
{
	static u32 gdt[GDT_ENTRIES][2];
	static u32 tls[6];
	unsigned int i;

	gdt[GDT_ENTRY_KERNEL_CS][0] = make_seg_lo(0, 0xFFFFF);
	gdt[GDT_ENTRY_KERNEL_CS][1] = make_seg_hi(0, 0xFFFFF, 0x9B);
	gdt[GDT_ENTRY_KERNEL_DS][0] = make_seg_lo(0, 0xFFFFF);
	gdt[GDT_ENTRY_KERNEL_DS][1] = make_seg_hi(0, 0xFFFFF, 0x93);
	gdt[GDT_ENTRY_DEFAULT_USER_CS][0] = make_seg_lo(0, 0xFFFFF);
	gdt[GDT_ENTRY_DEFAULT_USER_CS][1] = make_seg_hi(0, 0xFFFFF, 0xFB);
	gdt[GDT_ENTRY_DEFAULT_USER_DS][0] = make_seg_lo(0, 0xFFFFF);
	gdt[GDT_ENTRY_DEFAULT_USER_DS][1] = make_seg_hi(0, 0xFFFFF, 0xF3);
	for (i = 0; i < GDT_ENTRIES; i++)
		lguest_load_gdt_entry(i, gdt[i][0], gdt[i][1]);
	lguest_load_tls(tls);		/* no thread-local storage yet */
}

/* The clock: lguest_data.time is written by the Host (at LGUEST_INIT and
 * whenever it delivers an interrupt).  Read it until the seconds agree
 * (lguest_clock_read). */
u64 now_ns(void)
{
	volatile u32 *sec = &lguest_data.time_sec, *nsec = &lguest_data.time_nsec;
	u32 s, ns;

	do {
		s = *sec;
		ns = *nsec;
	} while (s != *sec);
	return (u64)s * 1000000000ull + ns;
}

/* The clock event: one shot, "delta" nanoseconds from now, IRQ 0 at expiry
 * (lguest_clockevent_set_next_event).  0 cancels. */
void set_clockevent(u64 delta_ns)
{
	if (delta_ns > 0xFFFFFFFFull)
		delta_ns = 0xFFFFFFFFull;
	hcall(LHCALL_SET_CLOCKEVENT, (u32)delta_ns, 0, 0, 0);
}

volatile u32 timer_fired;

/*
 * A periodic tick on top of the one-shot clock event, the way Linux runs a
 * HZ tick on lguest_clockevent: each expiry arms the next.  Only the stress
 * run uses it (lghz=N on the command line), to keep IRQ 0 coming at N Hz
 * while the block device and the console are busy.  While it ticks, IRQ 0
 * belongs to it: blk.c stops arming its watchdog, and msleep() counts ticks.
 */
static u32 tick_ns;
volatile u32 ticks;

void tick_start(unsigned int hz)
{
	tick_ns = hz ? 1000000000u / hz : 0;
	if (tick_ns)
		set_clockevent(tick_ns);
}

int ticking(void)
{
	return tick_ns != 0;
}

static void timer_irq(unsigned int irq, void *arg)
{
	timer_fired++;
	if (tick_ns) {
		ticks++;
		set_clockevent(tick_ns);
	}
}

/* lguest_time_init: hook IRQ 0, then stop blocking it. */
void timer_init(void)
{
	request_irq(0, timer_irq, NULL);
	lguest_data.blocked_interrupts &= ~1u;
}

void msleep(unsigned int ms)
{
	u32 flags = irq_save();
	u32 start = timer_fired;

	if (tick_ns) {
		u64 until = now_ns() + (u64)ms * 1000000ull;
		while (now_ns() < until)
			wait_for_interrupt();
	} else {
		set_clockevent((u64)ms * 1000000ull);
		while (timer_fired == start)
			wait_for_interrupt();
	}
	irq_restore(flags);
}

/* The early console (early_put_chars): before the virtio console is up, a
 * NOTIFY with the address of a NUL-terminated string makes the Launcher
 * print it. */
void early_puts(const char *s, size_t len)
{
	static char scratch[128];
	u32 flags = irq_save();

	while (len) {
		size_t n = len < sizeof(scratch) - 1 ? len : sizeof(scratch) - 1;
		memcpy(scratch, s, n);
		scratch[n] = '\0';
		hcall(LHCALL_NOTIFY, __pa(scratch), 0, 0, 0);
		s += n;
		len -= n;
	}
	irq_restore(flags);
}

int console_up;

void console_write(const char *s, size_t len)
{
	if (console_up)
		virtio_console_write(s, len);
	else
		early_puts(s, len);
}

/* head.S makes the first two hypercalls itself, before any C runs. */
u32 hcalls_trapped[LHCALL_COUNTED] = {
	[LHCALL_LGUEST_INIT] = 1,
	[LHCALL_NEW_PGTABLE] = 1,
};
u32 hcalls_queued[LHCALL_COUNTED];

/*
 * lghcalls=1: before powering off, one line per hypercall we made,
 * "hcalls: NUMBER NAME trap=N async=M", after a "hcalls: total ..." line, for
 * comparing with the Host's --stats.  The lines go out through the early
 * console, one NOTIFY each (every line is shorter than its 127 bytes): we
 * print a copy of the counts to which those NOTIFYs and the SHUTDOWN that
 * follows are already added, so the numbers cover the whole run.  Interrupts
 * stay off from here on: a handler's hypercall now would make them wrong.
 */
static void report_hcalls(void)
{
	static const char *const names[LHCALL_COUNTED] = {
		[LHCALL_FLUSH_ASYNC] = "FLUSH_ASYNC", [LHCALL_LGUEST_INIT] = "LGUEST_INIT",
		[LHCALL_SHUTDOWN] = "SHUTDOWN", [LHCALL_NEW_PGTABLE] = "NEW_PGTABLE",
		[LHCALL_FLUSH_TLB] = "FLUSH_TLB", [LHCALL_LOAD_IDT_ENTRY] = "LOAD_IDT_ENTRY",
		[LHCALL_SET_STACK] = "SET_STACK", [LHCALL_TS] = "TS",
		[LHCALL_SET_CLOCKEVENT] = "SET_CLOCKEVENT", [LHCALL_HALT] = "HALT",
		[LHCALL_SET_PMD] = "SET_PMD", [LHCALL_SET_PTE] = "SET_PTE",
		[LHCALL_SET_PGD] = "SET_PGD", [LHCALL_LOAD_TLS] = "LOAD_TLS",
		[LHCALL_NOTIFY] = "NOTIFY", [LHCALL_LOAD_GDT_ENTRY] = "LOAD_GDT_ENTRY",
		[LHCALL_SEND_INTERRUPTS] = "SEND_INTERRUPTS",
	};
	u32 trapped[LHCALL_COUNTED];
	char line[96];
	unsigned int i, lines = 1;
	u32 total = 0, queued = 0;

	irq_disable();
	memcpy(trapped, hcalls_trapped, sizeof(trapped));
	trapped[LHCALL_SHUTDOWN]++;
	for (i = 0; i < LHCALL_COUNTED; i++)
		if (trapped[i] || hcalls_queued[i] || i == LHCALL_NOTIFY)
			lines++;
	trapped[LHCALL_NOTIFY] += lines;
	for (i = 0; i < LHCALL_COUNTED; i++) {
		total += trapped[i];
		queued += hcalls_queued[i];
	}
	snprintf(line, sizeof(line), "hcalls: total trap=%u async=%u\n", total, queued);
	early_puts(line, strlen(line));
	for (i = 0; i < LHCALL_COUNTED; i++) {
		if (!trapped[i] && !hcalls_queued[i])
			continue;
		snprintf(line, sizeof(line), "hcalls: %u %s trap=%u async=%u\n", i,
			 names[i] ? names[i] : "?", trapped[i], hcalls_queued[i]);
		early_puts(line, strlen(line));
	}
}

/* lguest_power_off: the Host ends us, and the Launcher exits cleanly. */
void power_off(void)
{
	static const char msg[] = "Power down";
	char arg[8];

	if (cmdline_get("lghcalls", arg, sizeof(arg)))
		report_hcalls();
	for (;;)
		hcall(LHCALL_SHUTDOWN, __pa(msg), LGUEST_SHUTDOWN_POWEROFF, 0, 0);
}

/* lguest_panic: the message goes to the Host, which prints it as the reason
 * the Guest died.  The Host reads at most 128 bytes. */
void panic(const char *fmt, ...)
{
	static char msg[128];
	va_list ap;

	irq_disable();
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	printk("Kernel panic - not syncing: %s\n", msg);
	for (;;)
		hcall(LHCALL_SHUTDOWN, __pa(msg), LGUEST_SHUTDOWN_POWEROFF, 0, 0);
}

/* SET_STACK: the stack the Host switches to for a trap from ring 3
 * (lguest_load_sp0): segment, top of stack, and how many pages it is. */
u8 trap_stack[8192] __attribute__((aligned(4096)));

void set_kernel_stack(void *base, unsigned int pages)
{
	lazy_hcall(LHCALL_SET_STACK, LGUEST_DS, (u32)base + pages * PAGE_SIZE, pages, 0);
}

void start_kernel(void);

/*
 * lguest_init: we are at the high addresses with our own page tables and a
 * stack; the Host knows our lguest_data.  Set up what Linux's lguest_init
 * and the early parts of start_kernel would, then run the kernel proper.
 */
void lguest_init(void)
{
	boot_command_line[COMMAND_LINE_SIZE - 1] = '\0';
	ram_size = max_pfn << 12;

	/* The Host keeps the top of the address space (its GDT sits there);
	 * we round its reservation to a whole page table, 4 MiB
	 * (reserve_top_address). */
	reserve_top = (0u - lguest_data.reserve_mem) & ~0x3FFFFFu;
	/* head.S could map only so much: RAM plus the device pages above it
	 * must fit below the demand window, or __va() of a vring would lie. */
	if ((max_pfn << 12) + LGUEST_DEVICE_PAGES * PAGE_SIZE > mapped_end)
		panic("%u MiB of RAM is too much: this Guest maps at most %u MiB",
		      max_pfn >> 8, (mapped_end >> 20) - LGUEST_DEVICE_PAGES / 256);
	gdt_init();
	idt_init();
	set_kernel_stack(trap_stack, sizeof(trap_stack) / PAGE_SIZE);
	mm_init();
	timer_init();
	start_kernel();
	power_off();
}
