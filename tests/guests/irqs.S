/* Scenarios for interrupts, the clock and HALT (tests/test_host_irqs.py). */
#include "lib.S"
	.data
scen_table:
	.long s_basic, s_disabled, s_blocked, s_noirq, s_clock, s_cancel, s_halt_pending
	.long s_spin, s_no_handler, s_user_irq, s_time, s_rearm_expired
saved:	.long 0
done:	.long 0
	.text

start_irqs:                           /* init + gates + interrupts on */
	call init
	call setup_idt
	call irq_on
	ret

s_basic:                              /* 0: test raises IRQ 1 after the first NOTIFY */
	call start_irqs
	NOTIFY $1
	movl LOGCOUNT, %eax
	incl %eax
	NOTIFY %eax                       /* 2: delivered on the way back in */
	NOTIFY lguest_data                /* 0x200: irq_enabled restored by our iret */
	jmp poweroff

s_disabled:                           /* 1: IRQ 2 arrives with interrupts off */
	call init
	call setup_idt
	call irq_off
	NOTIFY $1
	movl LOGCOUNT, %eax
	incl %eax
	NOTIFY %eax                       /* 1: nothing yet */
	NOTIFY lguest_data+20             /* irq_pending = 0x200 */
	call irq_on                       /* sees irq_pending: SEND_INTERRUPTS */
	movl LOGCOUNT, %eax
	incl %eax
	NOTIFY %eax                       /* 2 */
	movl lguest_data+20, %eax
	incl %eax
	NOTIFY %eax                       /* 1: irq_pending cleared */
	jmp poweroff

s_blocked:                            /* 2: IRQ 3 blocked, IRQ 4 not */
	call start_irqs
	movl $(1 << 3), lguest_data+4
	NOTIFY $1
	movl LOGCOUNT, %eax
	incl %eax
	NOTIFY %eax                       /* 2: only IRQ 4 */
	movl $0, lguest_data+4
	HC LHCALL_SEND_INTERRUPTS
	movl LOGCOUNT, %eax
	incl %eax
	NOTIFY %eax                       /* 3: now IRQ 3 */
	jmp poweroff

s_noirq:                              /* 3: no delivery inside [noirq_start, noirq_end) */
	movl $w_start, lguest_data+1376
	movl $w_end, lguest_data+1380
	call start_irqs
	NOTIFY $1                         /* returns to w_start, inside the window */
w_start:
	movl LOGCOUNT, %eax
	movl %eax, saved
	nop
w_end:
	HC LHCALL_FLUSH_ASYNC             /* any exit outside the window delivers it */
	movl saved, %eax
	incl %eax
	NOTIFY %eax                       /* 1: nothing inside the window */
	movl LOGCOUNT, %eax
	incl %eax
	NOTIFY %eax                       /* 2 */
	jmp poweroff

s_clock:                              /* 4: SET_CLOCKEVENT(PARAM0 ns) + HALT */
	/* Interrupts off until HALT turns them on, as Linux's safe_halt: a tick
	 * delivered before the HALT (a loaded host) would leave it nothing to wait
	 * for, ever. */
	call init
	call setup_idt
	call irq_off
	NOTIFY $1
	HC LHCALL_SET_CLOCKEVENT, PARAM0
	HC LHCALL_HALT
	movl LOGCOUNT, %eax
	incl %eax
	NOTIFY %eax                       /* 2: the timer interrupt woke us */
	NOTIFY lguest_data+12             /* time.tv_sec */
	jmp poweroff

s_cancel:                             /* 5: arm 50 ms, cancel, HALT: only the test wakes us */
	call start_irqs
	HC LHCALL_SET_CLOCKEVENT, $50000000
	HC LHCALL_SET_CLOCKEVENT, $0
	HC LHCALL_HALT
	movl LOGCOUNT, %eax
	incl %eax
	NOTIFY %eax
	jmp poweroff

s_rearm_expired:                      /* 11: interrupts off, an event expires, re-arm */
	call start_irqs
	call irq_off
	HC LHCALL_SET_CLOCKEVENT, $1       /* 1 ns: expired by the next hypercall */
	HC LHCALL_SET_CLOCKEVENT, $1000000000
	call irq_on                       /* the expired one is pending: delivered now */
	movl LOGCOUNT, %eax
	incl %eax
	NOTIFY %eax                       /* 2 */
	HC LHCALL_SET_CLOCKEVENT, $0
	jmp poweroff

s_halt_pending:                       /* 6: interrupts off, IRQ pending, HALT wakes at once */
	call init
	call setup_idt
	call irq_off
	NOTIFY $1
	HC LHCALL_HALT
	movl LOGCOUNT, %eax
	incl %eax
	NOTIFY %eax                       /* 2 */
	jmp poweroff

s_spin:                               /* 7: spin until the test has had enough */
	call start_irqs
	NOTIFY $1
1:	incl saved
	jmp 1b

s_no_handler:                         /* 8: IRQ 5 without a gate stays pending */
	call init
	call irq_on
	NOTIFY $1
	HC LHCALL_FLUSH_ASYNC
	NOTIFY $2
	jmp poweroff

s_user_irq:                           /* 9: the clock interrupts ring 3 */
	call start_irqs
	call set_kernel_stack
	movl $cb_user, on_trap
	movl $user_code, %eax
	jmp to_user
cb_user:
	cmpl $0x20, %ecx
	jne 1f
	/* A loaded host may take over 1 ms to get back to ring 3: a tick that
	 * lands in ring 1 is re-armed, only one in ring 3 ends the test.
	 * (The frame's cs: common_trap's 44(%esp), plus our return address.) */
	cmpl $0x73, 48(%esp)
	jne 3f
	movl $1, done
	ret
3:	HC LHCALL_SET_CLOCKEVENT, $1000000
	ret
1:	cmpl $0x80, %ecx
	jne 2f
	cmpl $0, done
	jne poweroff
	HC LHCALL_SET_CLOCKEVENT, $1000000
2:	ret
user_code:
	int $0x80
1:	cmpl $0, done
	je 1b
	int $0x80

s_time:                               /* 10: lguest_data.time follows the clock */
	call init                         /* interrupts off until HALT: see s_clock */
	call setup_idt
	call irq_off
	NOTIFY lguest_data+12
	HC LHCALL_SET_CLOCKEVENT, $1000000
	HC LHCALL_HALT
	NOTIFY lguest_data+12
	NOTIFY lguest_data+16
	jmp poweroff
