/* A PAE Guest (tests/test_host_pae.py).  The test built PAE tables (64-bit entries):
 * a pgd of four entries at PGD, the PMD page PMD0 under its first entry, whose entry 0
 * maps 0-2 MiB 1:1 through PT0 and entry 1 maps 2-4 MiB through PT1 (to physical
 * 0x500000 up).  Everything we touch is below 2 MiB, so the tables are ours to write.
 * Our first NEW_PGTABLE is what tells the Host we are a PAE Guest. */
#include "lib.S"
#define LHCALL_SET_PMD 13
#define PARAM4 0x7014
#define PARAM5 0x7018
#define PARAM6 0x701c
#define PGD   0x180000
#define PMD0  0x181000
#define PT0   0x182000
#define PMD3  0x186000
#define NXPAGE 0x1f0000
	.data
scen_table:
	.long s_set_pte, s_set_pmd, s_set_pgd, s_switcher, s_nx, s_user, s_kill, s_smc
	.text

/* Read 0x1fd000, repoint its PTE at 0x1fc000 behind unicorn's back, read again (stale),
 * SET_PTE (the entry's two halves in the third and fourth arguments), read again. */
s_set_pte:                            /* 0 */
	call init
	HC LHCALL_NEW_PGTABLE, $PGD
	movl 0x1fd000, %eax
	NOTIFY %eax
	movl $(0x1fc000 | 7), PT0 + 8 * 0x1fd
	movl 0x1fd000, %eax
	NOTIFY %eax
	HC LHCALL_SET_PTE, $PGD, $0x1fd000, $(0x1fc000 | 7), $0
	movl 0x1fd000, %eax
	NOTIFY %eax
	jmp poweroff

s_set_pmd:                            /* 1: repoint the 2-4 MiB PMD entry at PT0 */
	call init
	HC LHCALL_NEW_PGTABLE, $PGD
	movl 0x200000, %eax
	NOTIFY %eax
	movl $(PT0 | 0x67), PMD0 + 8
	movl 0x200000, %eax
	NOTIFY %eax
	HC LHCALL_SET_PMD, $PMD0, $1
	movl 0x200000, %eax
	NOTIFY %eax
	jmp poweroff

s_set_pgd:                            /* 2: pgd entry 1 (1-2 GiB) to the PMD page PARAM0 */
	call init
	HC LHCALL_NEW_PGTABLE, $PGD
	movl 0x40000000, %eax
	NOTIFY %eax
	movl PARAM0, %eax
	orl $1, %eax
	movl %eax, PGD + 8
	movl 0x40000000, %eax
	NOTIFY %eax
	HC LHCALL_SET_PGD, $PGD, $1
	movl 0x40000000, %eax
	NOTIFY %eax
	jmp poweroff

/* 3: read the GDT at 0xffc00000 (kernel CS, low word: 0xffff); clobber the first Switcher
 * entry in PMD3 and SET_PMD it: the Host's is back; clobber it again and let the run
 * loop find it before the next entry.  With the pgd's top entry empty (PARAM0 = 0) only
 * the first read is made: the Host lent its own PMD page there. */
s_switcher:
	call init
	HC LHCALL_NEW_PGTABLE, $PGD
	movl 0xffc00000 + 0x60, %eax
	NOTIFY %eax
	cmpl $0, PARAM0
	je poweroff
	movl $0, PMD3 + 8 * 510
	HC LHCALL_SET_PMD, $PMD3, $510
	movl 0xffc00000 + 0x60, %eax
	NOTIFY %eax
	movl $0, PMD3 + 8 * 510
	NOTIFY $0x77
	movl 0xffc00000 + 0x60, %eax
	NOTIFY %eax
	jmp poweroff

/* 4: call the code at NXPAGE, whose PTE has NX set: the #PF handler clears the bit (and
 * says so with SET_PTE), the call is retried and returns what the code put in %eax. */
s_nx:
	call init
	call setup_idt
	movl $cb_clear_nx, on_trap
	HC LHCALL_NEW_PGTABLE, $PGD
	movl $NXPAGE, %eax
	call *%eax
	NOTIFY %eax
	jmp poweroff
cb_clear_nx:
	cmpl $14, %ecx
	jne 1f
	movl $0, PT0 + 8 * (NXPAGE >> 12) + 4
	movl PT0 + 8 * (NXPAGE >> 12), %edx
	HC LHCALL_SET_PTE, $PGD, $NXPAGE, %edx, $0
1:	ret

/* 5: cli at ring 1 (emulated: the Host reads the instruction through our tables), then
 * ring 3, whose int $0x80 arrives on the SET_STACK stack; the handler powers off. */
s_user:
	call init
	call setup_idt
	call set_kernel_stack
	HC LHCALL_NEW_PGTABLE, $PGD
	cli
	NOTIFY $1
	movl $cb_user_done, on_trap
	movl $user_code, %eax
	jmp to_user
user_code:
	movl $0x1234, %eax
	int $0x80
1:	jmp 1b
cb_user_done:
	cmpl $0x80, %ecx
	jne 1f
	jmp poweroff
1:	ret

/* 6: NEW_PGTABLE, store PARAM5 at PARAM6 if PARAM6 is set, hypercall PARAM0 (PARAM1..3),
 * read PARAM4 if set, power off.  The deaths. */
s_kill:
	call init
	call setup_idt
	HC LHCALL_NEW_PGTABLE, $PGD
	movl PARAM6, %edi
	testl %edi, %edi
	jz 1f
	movl PARAM5, %eax
	movl %eax, (%edi)
1:	movl PARAM1, %ebx
	movl PARAM2, %ecx
	movl PARAM3, %edx
	movl $0, %esi
	movl PARAM0, %eax
	int $0x1f
	movl PARAM4, %ebx
	testl %ebx, %ebx
	jz poweroff
	movl (%ebx), %eax
	jmp poweroff

/* 7: call the function the test wrote at physical 0x1e0000, NOTIFY what it returned,
 * over and over (code written behind unicorn's back, as by the block worker). */
s_smc:
	call init
	HC LHCALL_NEW_PGTABLE, $PGD
1:	movl $0x1e0000, %eax
	call *%eax
	NOTIFY %eax
	jmp 1b
