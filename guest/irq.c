/*
 * irq.c: interrupts and traps, the lguest way.
 *
 * There is no real interrupt flag for a Guest in ring 1: "interrupts enabled"
 * is the word lguest_data.irq_enabled (0 or 0x200, like eflags' IF), which the
 * Host reads before delivering.  If it finds them disabled it sets
 * lguest_data.irq_pending and waits; so when we re-enable we look at
 * irq_pending and, if set, ask for delivery with SEND_INTERRUPTS.  These are
 * lguest's paravirt irq ops: save_fl and irq_disable in arch/x86/lguest/
 * boot.c, lg_irq_enable and lg_restore_fl in arch/x86/lguest/head_32.S.
 *
 * The IDT lives in the Host: every gate goes to it with LOAD_IDT_ENTRY, as
 * lguest_write_idt_entry() does.
 */
#include "core.h"

/* The paravirt interrupt flag operations.  barrier(): the compiler must not
 * move memory accesses across them, exactly as it must not across cli/sti. */
u32 irq_save(void)
{
	u32 flags = lguest_data.irq_enabled;
	lguest_data.irq_enabled = 0;
	barrier();
	return flags;
}

void irq_disable(void)
{
	lguest_data.irq_enabled = 0;
	barrier();
}

void irq_restore(u32 flags)
{
	barrier();
	lguest_data.irq_enabled = flags;
	/* An interrupt came while they were off: take it now. */
	if ((flags & X86_EFLAGS_IF) && *(volatile u32 *)&lguest_data.irq_pending)
		hcall(LHCALL_SEND_INTERRUPTS, 0, 0, 0, 0);
}

void irq_enable(void)
{
	irq_restore(X86_EFLAGS_IF);
}

/*
 * Sleep until an interrupt: lguest_safe_halt().  We make the HALT with
 * interrupts disabled; the Host wakes us for any pending interrupt, enabling
 * them as it delivers (try_deliver_interrupt in interrupts_and_traps.c), so
 * an interrupt that arrived after the caller's last check is never lost.  A
 * caller that wants no lost wakeups disables interrupts, checks its
 * condition, and calls this in a loop; it returns with the caller's state.
 */
void wait_for_interrupt(void)
{
	u32 flags = irq_save();

	hcall(LHCALL_HALT, 0, 0, 0, 0);
	/* Whatever the Host did with irq_enabled, take anything pending now,
	 * then go back to the caller's state. */
	irq_enable();
	irq_restore(flags);
}

/* Gate descriptors: the CPU's two-word format, which the Host decodes. */
static u32 gate_lo(void *handler)
{
	return (0x60u << 16) | ((u32)handler & 0xFFFF);	/* __KERNEL_CS, as Linux */
}

static u32 gate_hi(void *handler, int trap_gate, int dpl)
{
	return ((u32)handler & 0xFFFF0000u) | 0x8000u	/* present */
		| ((u32)dpl << 13) | ((trap_gate ? 0xFu : 0xEu) << 8);
}

void set_idt_gate(unsigned int vector, void *handler, int trap_gate, int dpl)
{
	hcall(LHCALL_LOAD_IDT_ENTRY, vector, gate_lo(handler),
	      gate_hi(handler, trap_gate, dpl), 0);
}

/* An all-zero gate is "not present": a trap on it kills the Guest. */
void clear_idt_gate(unsigned int vector)
{
	hcall(LHCALL_LOAD_IDT_ENTRY, vector, 0, 0, 0);
}

extern char entry_0[], entry_128[];

void *entry_stub(unsigned int vector)
{
	if (vector < 64)
		return entry_0 + 16 * vector;
	if (vector == SYSCALL_VECTOR)
		return entry_128;
	return NULL;
}

static trap_fn trap_handlers[32];

trap_fn set_trap_handler(unsigned int vector, trap_fn fn)
{
	trap_fn old = trap_handlers[vector];
	trap_handlers[vector] = fn;
	return old;
}

/*
 * The IDT, as Linux 3.16's trap_init() and init_IRQ() build it: every
 * exception through an interrupt gate (a handler starts with interrupts off;
 * for #PF that also means nothing can overwrite lguest_data.cr2 before we read
 * it), int3 and into (3, 4) usable from ring 3 (DPL 3); the 32 IRQ vectors
 * as interrupt gates; the system call vector 0x80 as a trap gate ring 3 may
 * use (set_system_trap_gate).  The Host ignores vectors 2, 8, 15 and 0x1F (it
 * handles those itself), but we still tell it, as Linux does.
 */
void idt_init(void)
{
	unsigned int v;

	for (v = 0; v < 32; v++) {
		if (v == LGUEST_TRAP_ENTRY)
			continue;
		set_idt_gate(v, entry_stub(v), 0, (v == 3 || v == 4) ? 3 : 0);
	}
	for (v = 0; v < 32; v++)
		set_idt_gate(FIRST_EXTERNAL_VECTOR + v,
			     entry_stub(FIRST_EXTERNAL_VECTOR + v), 0, 0);
	set_idt_gate(SYSCALL_VECTOR, entry_stub(SYSCALL_VECTOR), 1, 3);
}

/* IRQ handlers: lguest IRQ n arrives on vector 0x20 + n. */
static struct {
	void (*fn)(unsigned int irq, void *arg);
	void *arg;
} irq_handlers[32];
volatile u32 irq_count[32];
u32 irq_nested;		/* interrupts that arrived while they were off */
u32 irq_from_user;	/* interrupts that arrived while ring 3 ran */

void request_irq(unsigned int irq, void (*handler)(unsigned int irq, void *arg), void *arg)
{
	if (irq >= 32)
		panic("request_irq: irq %u out of range", irq);
	irq_handlers[irq].arg = arg;
	irq_handlers[irq].fn = handler;
}

static const char *const trap_names[32] = {
	"divide error", "debug", "NMI", "int3", "overflow", "bounds",
	"invalid opcode", "device not available", "double fault",
	"coprocessor overrun", "invalid TSS", "segment not present",
	"stack fault", "general protection", "page fault", "15",
	"x87 error", "alignment check", "machine check", "SIMD error",
};

/* A trap nobody handled: in ring 3 the process dies, in the kernel we do. */
static void unhandled_trap(struct pt_regs *regs)
{
	const char *name = trap_names[regs->vector];

	if (user_mode(regs)) {
		printk("user: killed by trap %u (%s) at %08x, error %x\n",
		       regs->vector, name ? name : "?", regs->eip, regs->error_code);
		user_killed(regs);	/* does not return */
	}
	panic("Oops: trap %u (%s) at %08x error %x cr2 %08x",
	      regs->vector, name ? name : "?", regs->eip, regs->error_code,
	      lguest_data.cr2);
}

/* Called by common_entry in entry.S for every vector, on the current stack
 * (or the SET_STACK stack if we came from ring 3). */
void trap_dispatch(struct pt_regs *regs)
{
	unsigned int v = regs->vector;

	if (v >= FIRST_EXTERNAL_VECTOR && v < FIRST_EXTERNAL_VECTOR + 32) {
		static int depth;
		unsigned int irq = v - FIRST_EXTERNAL_VECTOR;

		/* Handlers run with interrupts off, so an interrupt can't
		 * land inside one, nor on code that had them off: if one
		 * does, the Host ignored irq_enabled, and drivers will see
		 * their queues change under their feet.  Say so, once. */
		if ((depth || !(regs->eflags & X86_EFLAGS_IF)) && !irq_nested++)
			printk("irq %u: delivered with interrupts disabled (eip %08x)\n",
			       irq, regs->eip);
		depth++;
		irq_count[irq]++;
		if (user_mode(regs))
			irq_from_user++;
		if (irq_handlers[irq].fn)
			irq_handlers[irq].fn(irq, irq_handlers[irq].arg);
		else
			printk("irq %u: nobody wants it\n", irq);
		depth--;
		return;
	}
	if (v == SYSCALL_VECTOR) {
		sys_call(regs);
		return;
	}
	if (v < 32) {
		if (trap_handlers[v] && trap_handlers[v](regs))
			return;
		if (v == 14 && do_page_fault(regs))
			return;
		unhandled_trap(regs);
	}
	panic("trap_dispatch: vector %u?", v);
}
