/* Code written behind unicorn's back (tests/test_host_internals.py).
 * The test writes a function at physical 0x300000 ("mov $imm, %eax; ret") through the
 * Launcher's mapping; we call it and NOTIFY what it returned, over and over. */
#include "lib.S"
	.data
scen_table:
	.long s_linear, s_paged
	.text

s_linear:                             /* 0: on the Host's 1:1 map */
	call init
1:	movl $0x300000, %eax
	call *%eax
	NOTIFY %eax
	jmp 1b

s_paged:                              /* 1: the test built a directory at 0x200000 that maps
	                                 0-4 MiB at 0 and at 0xC0000000 */
	call init
	HC LHCALL_NEW_PGTABLE, $0x200000
1:	movl $0x300000, %eax
	call *%eax
	NOTIFY %eax
	jmp 1b
