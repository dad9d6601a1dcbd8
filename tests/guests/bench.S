/* Guests for bench/hypercall.py: PARAM0 = iterations. */
#include "lib.S"
	.data
scen_table:
	.long b_hcall, b_trap, b_notify, b_spin, b_set_pte
	.text

b_hcall:                              /* 0: PARAM0 x SEND_INTERRUPTS, then NOTIFY 1 */
	call init
	NOTIFY $1
	movl PARAM0, %edi
1:	movl $LHCALL_SEND_INTERRUPTS, %eax
	int $0x1f
	decl %edi
	jnz 1b
	NOTIFY $2
	jmp poweroff

b_trap:                               /* 1: PARAM0 x "int $0x80" from ring 3 to a bare iret */
	call init
	call set_kernel_stack
	movl $bare_iret, %eax             /* a DPL-3 trap gate straight to an iret */
	movl %eax, %ecx
	andl $0xffff, %ecx
	orl $(0x60 << 16), %ecx
	andl $0xffff0000, %eax
	orl $0xef00, %eax
	movl %eax, %edx
	movl $0x80, %ebx
	movl $LHCALL_LOAD_IDT_ENTRY, %eax
	int $0x1f
	NOTIFY $1
	movl $user_loop, %eax
	jmp to_user
bare_iret:
	iret
user_loop:
	movl PARAM0, %edi
1:	int $0x80
	decl %edi
	jnz 1b
	int $0x30                         /* #GP with no handler: ends the run */

b_notify:                             /* 2: PARAM0 x NOTIFY */
	call init
	movl PARAM0, %edi
1:	NOTIFY $3
	decl %edi
	jnz 1b
	jmp poweroff

b_spin:                               /* 3: spin, for BREAK latency */
	call init
	NOTIFY $1
1:	jmp 1b

b_set_pte:                            /* 4: PARAM0 x SET_PTE (a flush for the Host), then NOTIFY 2 */
	call init
	NOTIFY $1
	movl PARAM0, %edi
1:	HC LHCALL_SET_PTE, $0, $0x1000, $0x1007
	decl %edi
	jnz 1b
	NOTIFY $2
	jmp poweroff
