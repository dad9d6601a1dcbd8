/*
 * lib.S: the runtime every tiny test Guest shares (included by the scenario files).
 *
 * Linked at 0x100000 and entered there by the Host at ring 1 on the Host's 1:1 map.
 * The test pokes a scenario number at physical 0x7000 (parameters at 0x7004...);
 * _start jumps through the scenario file's scen_table.  Every trap and interrupt goes
 * through one handler that appends a 48-byte record to the log at 0x8000 and irets:
 *
 *   0x8000 count                  0x8040 + 48*i: vec err eip cs eflags uesp uss
 *                                                irq_enabled cr2 irq_pending
 *
 * Scenarios report progress with NOTIFY (read() returns the value) and end with
 * SHUTDOWN "Power down".
 */
#define MODE     0x7000
#define PARAM0   0x7004
#define PARAM1   0x7008
#define PARAM2   0x700c
#define PARAM3   0x7010
#define LOGCOUNT 0x8000
#define LOGBASE  0x8040
#define KSTACK   0x90000
#define TRAPSTACK 0x60000
#define USTACK   0x50000

#define LHCALL_FLUSH_ASYNC 0
#define LHCALL_LGUEST_INIT 1
#define LHCALL_SHUTDOWN 2
#define LHCALL_NEW_PGTABLE 4
#define LHCALL_FLUSH_TLB 5
#define LHCALL_LOAD_IDT_ENTRY 6
#define LHCALL_SET_STACK 7
#define LHCALL_TS 8
#define LHCALL_SET_CLOCKEVENT 9
#define LHCALL_HALT 10
#define LHCALL_SET_PTE 14
#define LHCALL_SET_PGD 15
#define LHCALL_LOAD_TLS 16
#define LHCALL_NOTIFY 17
#define LHCALL_LOAD_GDT_ENTRY 18
#define LHCALL_SEND_INTERRUPTS 19

/* HC n, a, b, c, d: a hypercall with immediate (or register) arguments */
.macro HC n, a=$0, b=$0, c=$0, d=$0
	movl \a, %ebx
	movl \b, %ecx
	movl \c, %edx
	movl \d, %esi
	movl $\n, %eax
	int $0x1f
.endm

.macro NOTIFY v
	HC LHCALL_NOTIFY, \v
.endm

	.code32
	.text
	.globl _start
_start:
	movl $KSTACK, %esp
	movl MODE, %eax
	jmp *scen_table(,%eax,4)

/* LGUEST_INIT with our lguest_data */
init:
	HC LHCALL_LGUEST_INIT, $lguest_data
	ret

/* Install gates for vectors 0-31, 0x20-0x2f and 0x80 (interrupt gates, DPL 0, except
 * 3 and 0x80 which user space may use, DPL 3). */
setup_idt:
	pushl %edi
	movl $gate_table, %edi
1:	movl (%edi), %eax
	cmpl $-1, %eax
	je 2f
	movl 4(%edi), %ecx            /* handler */
	movl %ecx, %edx
	andl $0xffff0000, %edx
	orl 8(%edi), %edx             /* present | DPL | type */
	andl $0xffff, %ecx
	orl $(0x60 << 16), %ecx
	movl %eax, %ebx
	movl $0, %esi
	movl $LHCALL_LOAD_IDT_ENTRY, %eax
	int $0x1f
	addl $12, %edi
	jmp 1b
2:	popl %edi
	ret

set_kernel_stack:                     /* SET_STACK for traps from ring 3, user segments */
	HC LHCALL_SET_STACK, $0x69, $TRAPSTACK, $1
	HC LHCALL_LOAD_GDT_ENTRY, $14, $0x0000ffff, $0x00cffa00
	HC LHCALL_LOAD_GDT_ENTRY, $15, $0x0000ffff, $0x00cff200
	ret

irq_on:                               /* lguest-style enable: flag, then look for pending */
	movl $0x200, lguest_data
	cmpl $0, lguest_data+20
	je 1f
	pushl %eax
	movl $LHCALL_SEND_INTERRUPTS, %eax
	int $0x1f
	popl %eax
1:	ret

irq_off:
	movl $0, lguest_data
	ret

poweroff:
	HC LHCALL_SHUTDOWN, $msg_powerdown, $1
	jmp poweroff

/* Drop to ring 3 at %eax with user stack USTACK. */
to_user:
	pushl $0x7b
	pushl $USTACK
	pushl $0x202
	pushl $0x73
	pushl %eax
	iret

.macro STUB vec
stub_\vec:
	.if (\vec == 8) || ((\vec >= 10) && (\vec <= 14)) || (\vec == 17)
	.else
	pushl $0
	.endif
	pushl $\vec
	jmp common_trap
.endm

	.irp v, 0,1,3,4,5,6,7,9,10,11,12,13,14,16,17,18,19,32,33,34,35,36,37,38,39,40,128
	STUB \v
	.endr

common_trap:
	pushal
	movl LOGCOUNT, %ebx
	imull $48, %ebx, %edi
	addl $LOGBASE, %edi
	movl 32(%esp), %eax
	movl %eax, 0(%edi)
	movl 36(%esp), %eax
	movl %eax, 4(%edi)
	movl 40(%esp), %eax
	movl %eax, 8(%edi)
	movl 44(%esp), %eax
	movl %eax, 12(%edi)
	movl 48(%esp), %eax
	movl %eax, 16(%edi)
	testl $3, 44(%esp)
	jz 1f
	movl 52(%esp), %eax
	movl %eax, 20(%edi)
	movl 56(%esp), %eax
	movl %eax, 24(%edi)
1:	movl lguest_data, %eax
	movl %eax, 28(%edi)
	movl lguest_data+8, %eax
	movl %eax, 32(%edi)
	movl lguest_data+20, %eax
	movl %eax, 36(%edi)
	incl LOGCOUNT
	movl on_trap, %eax
	testl %eax, %eax
	jz 2f
	movl 32(%esp), %ecx           /* vector for the callback */
	call *%eax
2:	movl skip_len, %eax
	addl %eax, 40(%esp)
	movl $0, skip_len
	popal
	addl $8, %esp
	/* As lguest_iret: restore irq_enabled from the frame, inside the no-irq window. */
	pushl %eax
	movl 12(%esp), %eax
	andl $0x200, %eax
noirq_start:
	movl %eax, %ss:lguest_data
	popl %eax
	iret
noirq_end:

	.data
	.align 4
on_trap:	.long 0               /* optional callback(vec in %ecx) from the handler */
skip_len:	.long 0               /* bytes to skip past a faulting instruction */
msg_powerdown:	.asciz "Power down"

	.align 4
gate_table:
	.irp v, 0,1,4,5,6,7,9,10,11,12,13,14,16,17,18,19,32,33,34,35,36,37,38,39,40
	.long \v, stub_\v, 0x8e00
	.endr
	.long 3, stub_3, 0xee00
	.long 128, stub_128, 0xef00
	.long -1

	.align 4096
	.globl lguest_data
lguest_data:
	.long 0                       /* irq_enabled */
	.long 0                       /* blocked_interrupts */
	.long 0                       /* cr2 */
	.long 0, 0                    /* time */
	.long 0                       /* irq_pending */
	.fill 64, 1, 0xff             /* hcall_status */
	.fill 64*20, 1, 0             /* hcalls */
	.long 0                       /* reserve_mem */
	.long 0                       /* tsc_khz */
	.long noirq_start
	.long noirq_end
	.long 0xC0000000              /* kernel_address */
	.long 0x80                    /* syscall_vec */
	.align 4096
	.text
