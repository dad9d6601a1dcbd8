/* Code that changes under the engine (tests/test_host_internals.py, test_host_stores.py).
 * The test writes a function at physical 0x300000 ("mov $imm, %eax; ret") through the
 * Launcher's mapping; we call it and NOTIFY what it returned, over and over.  In
 * scenarios 2 and 3 the Guest rewrites the function itself first. */
#include "lib.S"
	.data
scen_table:
	.long s_linear, s_paged, s_rewrite, s_rewrite_alias, s_ro_store
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

s_rewrite:                            /* 2: the Guest rewrites the function it ran, through
	                                 the address it runs it at (the Host's 1:1 map) */
	call init
	movl $0x300000, %edi
	jmp rewrite

s_rewrite_alias:                      /* 3: paged as in 1; runs the function at 0x300000 and
	                                 rewrites it through its other alias, 0xC0300000 */
	call init
	HC LHCALL_NEW_PGTABLE, $0x200000
	movl $0xC0300000, %edi
rewrite:
	xorl %ebp, %ebp
1:	incl %ebp
	movl %ebp, 1(%edi)            /* the immediate of "mov $imm, %eax" */
	movl %ebp, 0x800(%edi)        /* and data on the same page, now free of code */
	movl $0x300000, %eax
	call *%eax                    /* translated again: the page holds code again */
	NOTIFY %eax                   /* 1, 2, 3... */
	jmp 1b

s_ro_store:                           /* 4: paged; the test mapped 0x3ff000 read-write onto
	                                 the Host's GDT page, which the engine has read-only */
	call init
	HC LHCALL_NEW_PGTABLE, $0x200000
	movl 0x3ff000+0x60, %eax      /* readable: our code segment descriptor */
	NOTIFY %eax
	movl $0x200, %ecx             /* stores elsewhere first: those pages go fast */
1:	movl %ecx, 0x380000(,%ecx,4)
	loop 1b
	movl $0xdeadbeef, 0x3ff000+0x68
	NOTIFY $1                     /* never: the Guest dies on the store */
	jmp poweroff
