/* Scenarios that kill the Guest (tests/test_host_deaths.py); PARAM0.. are arguments. */
#include "lib.S"
	.data
scen_table:
	.long s_hcall4, s_load, s_spin_user_bad_stack, s_shutdown_bad, s_bad_kaddr
	.long s_paged_load, s_paged_stack
	.text

s_hcall4:                             /* 0: init, then hypercall PARAM0 (PARAM1..3) */
	call init
	call setup_idt
	HC 0, PARAM1, PARAM2, PARAM3
	/* the macro loaded eax with 0: patch in the call number and go again */
	movl PARAM1, %ebx
	movl PARAM2, %ecx
	movl PARAM3, %edx
	movl PARAM0, %eax
	int $0x1f
	jmp poweroff

s_load:                               /* 1: read from address PARAM0 */
	call init
	movl PARAM0, %ebx
	movl (%ebx), %eax
	jmp poweroff

s_spin_user_bad_stack:                /* 2: SET_STACK to PARAM0, then a trap from ring 3 */
	call init
	call setup_idt
	call set_kernel_stack
	HC LHCALL_SET_STACK, $0x69, PARAM0, $1
	movl $user_trap, %eax
	jmp to_user
user_trap:
	int $0x80

s_shutdown_bad:                       /* 3: SHUTDOWN with a message address out of range */
	call init
	HC LHCALL_SHUTDOWN, PARAM0, $1

s_bad_kaddr:                          /* 4: kernel_address in the Switcher's slot */
	movl PARAM0, %eax
	movl %eax, lguest_data+1384
	call init
	jmp poweroff

	.data
scen_table2:
	.text
s_paged_load:                         /* 5: NEW_PGTABLE(0x200000), then read PARAM0 */
	call init
	HC LHCALL_NEW_PGTABLE, $0x200000
	movl PARAM0, %ebx
	movl (%ebx), %eax
	jmp poweroff

s_paged_stack:                        /* 6: NEW_PGTABLE(0x200000), SET_STACK(PARAM0) */
	call init
	HC LHCALL_NEW_PGTABLE, $0x200000
	HC LHCALL_SET_STACK, $0x69, PARAM0, $2
	jmp poweroff
