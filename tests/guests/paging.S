/* SET_PTE, SET_PGD and FLUSH_TLB (tests/test_host_paging.py).  The test built a page
 * directory at 0x200000: 0-4 MiB 1:1 through the table at 0x201000, and 4-8 MiB
 * through the table at 0x202000 (0x400000 -> physical 0x500000). */
#include "lib.S"
#define PT0 0x201000
#define PD  0x200000
	.data
scen_table:
	.long s_set_pte, s_flush_tlb, s_set_pgd, s_switcher_slot
	.text

/* Read 0x3fd000, repoint its PTE at 0x3fc000 behind unicorn's back, read again (stale),
 * tell the Host with hypercall PARAM0, read again. */
retarget:
	movl 0x3fd000, %eax
	NOTIFY %eax
	movl $(0x3fc000 | 7), PT0 + 4 * 0x3fd
	movl 0x3fd000, %eax
	NOTIFY %eax
	ret

s_set_pte:                            /* 0 */
	call init
	HC LHCALL_NEW_PGTABLE, $PD
	call retarget
	HC LHCALL_SET_PTE, $PD, $0x3fd000, $(0x3fc000 | 7)
	movl 0x3fd000, %eax
	NOTIFY %eax
	jmp poweroff

s_flush_tlb:                          /* 1 */
	call init
	HC LHCALL_NEW_PGTABLE, $PD
	call retarget
	HC LHCALL_FLUSH_TLB, $0
	movl 0x3fd000, %eax
	NOTIFY %eax
	jmp poweroff

s_set_pgd:                            /* 2: repoint the 4-8 MiB PDE at the 0-4 MiB table */
	call init
	HC LHCALL_NEW_PGTABLE, $PD
	movl 0x400000, %eax
	NOTIFY %eax
	movl $(PT0 | 0x67), PD + 4
	movl 0x400000, %eax
	NOTIFY %eax
	HC LHCALL_SET_PGD, $PD, $1
	movl 0x400000, %eax
	NOTIFY %eax
	jmp poweroff

s_switcher_slot:                      /* 3: clobber our top slot, SET_PGD it: the Host's is back */
	call init
	HC LHCALL_NEW_PGTABLE, $PD
	movl $0, PD + 4 * 1023
	HC LHCALL_SET_PGD, $PD, $1023
	movl 0xffc00000 + 0x60, %eax      /* reads the GDT again */
	NOTIFY %eax
	/* clobber it again and let the run loop find it before the next entry */
	movl $0, PD + 4 * 1023
	NOTIFY $0x77
	movl 0xffc00000 + 0x60, %eax
	NOTIFY %eax
	jmp poweroff
