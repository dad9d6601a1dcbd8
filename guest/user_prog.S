/*
 * user_prog.S: tiny ring-3 programs, position independent, which user.c
 * copies to USER_BASE in a fresh address space and runs.  They speak the
 * i386 Linux system call ABI: int $0x80, number in %eax (1 exit, 4 write,
 * 20 getpid), arguments in %ebx, %ecx, %edx.
 */
#define SYS_exit	1
#define SYS_write	4
#define SYS_getpid	20

	.section .rodata
/*
 * user_hello: say hello, prove we are in ring 3, grow the stack a page at a
 * time and use a heap page (both mapped by the kernel on first touch), then
 * exit(42).  On any surprise it exits with a small code saying which.
 */
	.globl user_hello_start, user_hello_end
user_hello_start:
	call	1f
1:	popl	%ebp				/* %ebp = where we run */
	movl	%cs, %eax
	andl	$3, %eax
	cmpl	$3, %eax
	movl	$1, %ebx
	jne	99f				/* exit(1): not ring 3 */

	movl	$SYS_write, %eax
	movl	$1, %ebx
	leal	(hello - 1b)(%ebp), %ecx
	movl	$(hello_end - hello), %edx
	int	$0x80
	cmpl	$(hello_end - hello), %eax
	movl	$2, %ebx
	jne	99f				/* exit(2): short write */

	/* Walk the stack down four pages: the first is the page our call
	 * already faulted in, the other three are fresh faults. */
	movl	%esp, %esi
	movl	$4, %ecx
2:	subl	$4096, %esp
	movl	%ecx, (%esp)
	decl	%ecx
	jnz	2b
	movl	%esi, %esp

	/* A heap page: write a pattern, read it back. */
	movl	$0x10000000, %edi
	movl	$0x600dcafe, (%edi)
	movl	$0x12345678, 4092(%edi)
	cmpl	$0x600dcafe, (%edi)
	movl	$3, %ebx
	jne	99f
	cmpl	$0x12345678, 4092(%edi)
	jne	99f

	movl	$SYS_getpid, %eax
	int	$0x80
	testl	%eax, %eax
	movl	$4, %ebx
	jle	99f

	movl	$SYS_write, %eax
	movl	$1, %ebx
	leal	(bye - 1b)(%ebp), %ecx
	movl	$(bye_end - bye), %edx
	int	$0x80

	movl	$42, %ebx
99:	movl	$SYS_exit, %eax
	int	$0x80
	ud2					/* exit must not return */
hello:	.ascii	"hello from ring 3\n"
hello_end:
bye:	.ascii	"user: stack and heap pages mapped on demand\n"
bye_end:
user_hello_end:

/* user_hcall: a hypercall from ring 3, which the Host must refuse. */
	.globl user_hcall_start, user_hcall_end
user_hcall_start:
	movl	$2, %eax			/* LHCALL_SHUTDOWN... */
	movl	$0, %ebx
	movl	$1, %ecx
	int	$0x1f
	movl	$77, %ebx
	movl	$SYS_exit, %eax
	int	$0x80
user_hcall_end:

/* user_spin: spin in ring 3 for 2^27 TSC ticks (rdtsc is allowed there:
 * CR4.TSD is clear), long enough for a timer interrupt to arrive while we
 * are in user mode, then exit(7). */
	.globl user_spin_start, user_spin_end
user_spin_start:
	rdtsc
	movl	%eax, %esi
1:	rdtsc
	subl	%esi, %eax
	cmpl	$0x08000000, %eax
	jb	1b
	movl	$7, %ebx
	movl	$SYS_exit, %eax
	int	$0x80
user_spin_end:

/* user_kread: read kernel memory, which a user page table must not allow. */
	.globl user_kread_start, user_kread_end
user_kread_start:
	movl	0xC1000000, %eax
	movl	$78, %ebx
	movl	$SYS_exit, %eax
	int	$0x80
user_kread_end:
