/*
 * bad.c: deliberately bad Guests (lgbad=NAME), one bad action right after
 * boot, so the Host's tests can check how it kills a misbehaving Guest.
 * Each says what it is about to do first.  Names we don't know go to the
 * driver engineer's badring_run() (bad vrings); if nobody knows the name we
 * say so and power off.
 */
#include "core.h"
#if __has_include("badring.h")
#include "badring.h"
#endif

int badring_run(const char *name) __attribute__((weak));

/* "lgbad NAME: what", the same shape badring.c uses. */
static const char *bad_name;
static void announce(const char *what)
{
	printk("lgbad %s: %s\n", bad_name, what);
}

void run_bad(const char *name)
{
	bad_name = name;
	if (!strcmp(name, "hcall")) {
		announce("hypercall 99");
		hcall(99, 0, 0, 0, 0);
	} else if (!strcmp(name, "trap")) {
		announce("clearing the #DE gate, then dividing by zero");
		clear_idt_gate(0);
		{
			u32 a = 1, d = 0, zero = 0;
			asm volatile("divl %2" : "+a"(a), "+d"(d) : "c"(zero) : "memory");
		}
	} else if (!strcmp(name, "user-hcall")) {
		struct user_result res;
		announce("int $0x1f from ring 3");
		run_user(user_hcall_start, user_hcall_end - user_hcall_start, 0, &res);
		/* The right answer is a #GP for the process, not a dead Guest. */
		printk("lgbad user-hcall: the process %s %d\n",
		       res.exited ? "exited with" : "was killed by trap", res.code);
		return;
	} else if (!strcmp(name, "reinit")) {
		announce("a second LGUEST_INIT");
		hcall(LHCALL_LGUEST_INIT, __pa(&lguest_data), 0, 0, 0);
	} else if (!strcmp(name, "pointer")) {
		announce("SHUTDOWN with a message outside guest memory");
		hcall(LHCALL_SHUTDOWN, 0xF0000000u, LGUEST_SHUTDOWN_POWEROFF, 0, 0);
	} else if (!strcmp(name, "gdt-write")) {
		struct { u16 limit; u32 base; } __attribute__((packed)) gdtr;
		/* sgdt is unprivileged: it tells us where the Host keeps the
		 * GDT, in the top of the address space it reserved. */
		asm volatile("sgdt %0" : "=m"(gdtr));
		printk("lgbad gdt-write: writing to the Host's GDT at %08x\n", gdtr.base);
		*(volatile u32 *)(gdtr.base + 8 * GDT_ENTRY_KERNEL_CS + 4) = 0x00CFFA00;
	} else if (!strcmp(name, "triple")) {
		announce("a fault with a broken stack");
		/* No page behind the stack: the Host can't push the #PF frame. */
		asm volatile("movl $0xBFF00000, %%esp; pushl $0" ::: "memory");
	} else if (badring_run && badring_run(name)) {
		/* theirs */
	} else {
		printk("lgbad: unknown %s\n", name);
		return;
	}
	printk("lgbad %s: the Host let us live\n", name);
}
