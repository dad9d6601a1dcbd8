/*
 * entry.S: the way into the Guest kernel from a trap, an interrupt or a
 * system call, and the way back out (lguest_iret).
 *
 * The Host delivers the way the CPU would through our IDT (the entries we gave
 * it with LOAD_IDT_ENTRY): it pushes [ss, esp if we were in ring 3], eflags,
 * cs, eip and, for vectors 8, 10-14 and 17, an error code, then jumps to the
 * handler in ring 1.  Each stub below evens out the frame (a zero error code
 * where the CPU pushes none), pushes its vector and joins common_entry, which
 * saves the rest as a struct pt_regs (core.h) and calls trap_dispatch().
 * Linux's arch/x86/kernel/entry_32.S does the same job with more ceremony.
 */
#include "lguest.h"

	.text
.macro stub vec
	.balign 16
entry_\vec:
	.if !(\vec == 8 || (\vec >= 10 && \vec <= 14) || \vec == 17)
	pushl	$0			/* no error code from the CPU: fake one */
	.endif
	pushl	$\vec
	jmp	common_entry
.endm

/* Stubs for the exceptions (0-31) and the 32 IRQs (0x20-0x3F), 16 bytes
 * apart so irq.c can find the stub for vector v at entry_0 + 16 * v, and the
 * system call vector 0x80. */
	.globl entry_0, entry_128
.irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
	stub \v
.endr
.irp v, 32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47,48,49,50,51,52,53,54,55,56,57,58,59,60,61,62,63
	stub \v
.endr
	stub 128

common_entry:
	pushl	%gs
	pushl	%fs
	pushl	%es
	pushl	%ds
	pushl	%eax
	pushl	%ebp
	pushl	%edi
	pushl	%esi
	pushl	%edx
	pushl	%ecx
	pushl	%ebx
	/* A trap from ring 3 arrives with the user's data segments loaded:
	 * switch to our own (the Host's LGUEST_DS, ring 1). */
	movl	$LGUEST_DS, %eax
	movl	%eax, %ds
	movl	%eax, %es
	cld
	pushl	%esp			/* struct pt_regs * */
	call	trap_dispatch
	addl	$4, %esp
	popl	%ebx
	popl	%ecx
	popl	%edx
	popl	%esi
	popl	%edi
	popl	%ebp
	popl	%eax
	popl	%ds
	popl	%es
	popl	%fs
	popl	%gs
	addl	$8, %esp		/* vector and error code */
	jmp	lguest_iret

/*
 * lguest_iret: how every trap and interrupt handler returns (lguest_iret in
 * arch/x86/lguest/head_32.S).  iret at ring 1 can't restore the interrupt
 * flag (popf and iret ignore IF below ring 0), so we copy the IF of the frame
 * we return to into lguest_data.irq_enabled first.  Between that store and
 * the iret, an interrupt would be delivered on top of a frame we are about to
 * pop, so the Host delivers none while eip is in [lguest_noirq_start,
 * lguest_noirq_end).  The %ss: prefix matters: %ds may already be the user's.
 * (Linux stores the whole eflags word; we store just its IF bit, so
 * irq_enabled stays exactly 0 or 0x200, as DESIGN §4 describes it.)
 */
	.globl lguest_iret, lguest_noirq_start, lguest_noirq_end, noirq_spin
lguest_iret:
	pushl	%eax
	movl	12(%esp), %eax			/* the frame's eflags */
	andl	$X86_EFLAGS_IF, %eax
lguest_noirq_start:
	movl	%eax, %ss:lguest_data + LGUEST_DATA_irq_enabled
	popl	%eax
	iret
/*
 * noirq_spin(cycles, &entry_count): not part of Linux.  The irq test needs to
 * stay inside the noirq window for a while to see the Host hold an
 * interrupt back, and the window is fixed at LGUEST_INIT, so the spin lives
 * here, inside it.  It stores irq_count[0] (timer IRQs delivered so far) as
 * it enters, spins for "cycles" TSC ticks (rdtsc works in ring 1; the low
 * word's difference is enough below 2^32 ticks), and returns irq_count[0]
 * read before leaving: any difference was delivered inside the window.
 */
noirq_spin:
	pushl	%ebx
	movl	irq_count, %eax
	movl	12(%esp), %ecx
	movl	%eax, (%ecx)			/* *entry_count */
	rdtsc
	movl	%eax, %ebx			/* start */
1:	rdtsc
	subl	%ebx, %eax
	cmpl	8(%esp), %eax
	jb	1b
	movl	irq_count, %eax
	popl	%ebx
	ret
lguest_noirq_end:

/*
 * user_enter(eip, esp): save our callee-saved registers and stack pointer,
 * then "return" to ring 3 at eip with the given stack, interrupts enabled,
 * through lguest_iret.  We come back here (user_enter returns) when the
 * kernel calls user_return(value) on behalf of the dying process.
 */
	.globl user_enter, user_return
user_enter:
	pushl	%ebp
	pushl	%ebx
	pushl	%esi
	pushl	%edi
	movl	%esp, user_kernel_esp
	movl	20(%esp), %eax		/* eip */
	movl	24(%esp), %edx		/* esp */
	pushl	$USER_DS		/* the frame iret pops for ring 3 */
	pushl	%edx
	pushl	$(X86_EFLAGS_IF | 0x2)
	pushl	$USER_CS
	pushl	%eax
	movl	$USER_DS, %eax
	movl	%eax, %ds
	movl	%eax, %es
	xorl	%eax, %eax
	movl	%eax, %fs
	movl	%eax, %gs
	xorl	%ebx, %ebx
	xorl	%ecx, %ecx
	xorl	%edx, %edx
	xorl	%esi, %esi
	xorl	%edi, %edi
	xorl	%ebp, %ebp
	jmp	lguest_iret

user_return:
	movl	4(%esp), %eax
	movl	user_kernel_esp, %esp
	popl	%edi
	popl	%esi
	popl	%ebx
	popl	%ebp
	ret

