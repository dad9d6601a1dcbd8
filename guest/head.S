/*
 * head.S: where our Guest begins, following Linux's own path.
 *
 * The Launcher loads us at physical 0x1000000 and the Host starts us at the
 * physical address of startup_32 (the ELF entry), with paging on through the
 * Host's identity map, our segments already loaded (cs 0x61, ds/es/ss 0x69,
 * ring 1) and %esi = 0, the physical address of boot_params.  Everything here
 * is linked at PAGE_OFFSET + physical but runs at the physical address until
 * we jump high, so every absolute address is written pa(X).
 *
 * startup_32 mirrors arch/x86/kernel/head_32.S: honour KEEP_SEGMENTS, clear
 * BSS, copy boot_params and the command line, build page tables, then check
 * hardware_subarch and take the lguest_entry path of
 * arch/x86/lguest/head_32.S: LGUEST_INIT, NEW_PGTABLE, stack, lguest_init.
 */
#include "lguest.h"

#define pa(X)	((X) - 0xC0000000)
#define PAGE_OFFSET	0xC0000000
#define PAGE_OFFSET_PDE	(0xC0000000 >> 22)	/* 768: first kernel PDE */
/* We map RAM and the device pages into the kernel's linear map up to 1016 MiB
 * (0xFF800000); the 4 MiB above that are the pagefault test's demand-mapped
 * window, and the top 4 MiB are the Host's (reserve_mem).  Linux instead
 * stops at 896 MiB and calls the rest highmem; we have no highmem, and
 * lguest_init refuses RAM whose device pages would not fit. */
#define MAXMEM		0x3F800000
#define BOOT_STACK_SIZE	16384

	.section .head.text, "ax"
	.globl startup_32
startup_32:
	/* The Launcher sets KEEP_SEGMENTS: our segments were loaded by the Host
	 * and must stay (a Guest can't lgdt: it is privileged).  Without it we
	 * would load our own boot GDT as Linux does, which under lguest traps. */
	testb	$KEEP_SEGMENTS, BP_loadflags(%esi)
	jnz	2f
	lgdt	pa(boot_gdt_descr)
	movl	$0x18, %eax
	movl	%eax, %ds
	movl	%eax, %es
	movl	%eax, %ss
2:
	/* Clear BSS: don't trust the loader to have zeroed memory past p_filesz. */
	cld
	xorl	%eax, %eax
	movl	$pa(__bss_start), %edi
	movl	$pa(__bss_stop), %ecx
	subl	%edi, %ecx
	shrl	$2, %ecx
	rep stosl

	/* Copy boot_params (%esi) and the command line somewhere safe: the
	 * memory they sit in will become ordinary free pages. */
	movl	$pa(boot_params), %edi
	movl	$(PARAM_SIZE / 4), %ecx
	rep movsl
	movl	pa(boot_params) + BP_cmd_line_ptr, %esi
	andl	%esi, %esi
	jz	1f
	movl	$pa(boot_command_line), %edi
	movl	$((COMMAND_LINE_SIZE - 4) / 4), %ecx	/* keep the last word NUL */
	rep movsl
1:
	/*
	 * How much is there to map?  The end of RAM from the e820 map (the
	 * Launcher gives one entry, {0, MEM, RAM}), plus the device pages
	 * just above it (lguest_device.c reads them at max_pfn << 12).
	 */
	xorl	%ebx, %ebx			/* %ebx = highest end of RAM */
	movzbl	pa(boot_params) + BP_e820_entries, %ecx
	movl	$pa(boot_params) + BP_e820_map, %esi
3:	jecxz	5f
	cmpl	$E820_RAM, 16(%esi)		/* type */
	jne	4f
	cmpl	$0, 4(%esi)			/* addr above 4 GiB: not ours */
	jne	4f
	movl	(%esi), %eax
	addl	8(%esi), %eax			/* addr + size (low words) */
	jc	4f
	cmpl	%ebx, %eax
	jbe	4f
	movl	%eax, %ebx
4:	addl	$20, %esi			/* sizeof(struct e820entry) */
	decl	%ecx
	jmp	3b
5:	andl	$~0xFFF, %ebx
	movl	%ebx, %eax
	shrl	$12, %eax
	movl	%eax, pa(max_pfn)
	addl	$(LGUEST_DEVICE_PAGES * 4096), %ebx
	cmpl	$MAXMEM, %ebx
	jbe	6f
	movl	$MAXMEM, %ebx
6:	movl	%ebx, pa(mapped_end)

#ifdef CONFIG_X86_PAE
	/*
	 * Build the page tables, as head_32.S does for PAE: the kernel's one
	 * PMD page (0xC0000000 up, 2 MiB an entry) is kernel_pmd, and the
	 * page tables it points at go right after the kernel image.  The
	 * identity mapping is the same PMD page again, in the first top-level
	 * entry.  Entries are 64 bits; the high halves stay zero.
	 * %edi = next page table, %esi = next pte value, %edx = PMD slot.
	 */
	movl	$pa(kernel_pmd) + PGD_IDENT_ATTR, %eax
	movl	%eax, pa(swapper_pg_dir)			/* identity */
	movl	%eax, pa(swapper_pg_dir) + (PAGE_OFFSET >> PGDIR_SHIFT) * 8
	movl	$pa(_end) + 4095, %edi
	andl	$~4095, %edi
	movl	$PTE_IDENT_ATTR, %esi
	movl	$pa(kernel_pmd), %edx
7:	leal	PDE_IDENT_ATTR(%edi), %ecx
	movl	%ecx, (%edx)
	addl	$8, %edx
	movl	$PTRS_PER_PTE, %ecx
8:	movl	%esi, %eax
	cmpl	%ebx, %esi			/* past the end: leave it empty */
	jb	9f
	xorl	%eax, %eax
9:	stosl
	xorl	%eax, %eax			/* the high half */
	stosl
	addl	$4096, %esi
	decl	%ecx
	jnz	8b
	cmpl	%ebx, %esi
	jb	7b
	movl	%edi, pa(pgtable_brk)
#else
	/*
	 * Build the page tables, as head_32.S does for non-PAE: page tables
	 * go right after the kernel image (Linux's brk area), and each one is
	 * installed twice in swapper_pg_dir, at 0 (so we keep running at
	 * physical addresses once we switch to it) and at PAGE_OFFSET.
	 * %edi = next page table, %esi = next pte value, %edx = pgdir slot.
	 */
	movl	$pa(_end) + 4095, %edi
	andl	$~4095, %edi
	movl	$PTE_IDENT_ATTR, %esi
	movl	$pa(swapper_pg_dir), %edx
7:	leal	PDE_IDENT_ATTR(%edi), %ecx
	movl	%ecx, (%edx)				/* identity */
	movl	%ecx, (PAGE_OFFSET_PDE * 4)(%edx)	/* PAGE_OFFSET */
	addl	$4, %edx
	movl	$1024, %ecx
8:	movl	%esi, %eax
	cmpl	%ebx, %esi			/* past the end: leave it empty */
	jb	9f
	xorl	%eax, %eax
9:	stosl
	addl	$4096, %esi
	decl	%ecx
	jnz	8b
	cmpl	%ebx, %esi
	jb	7b
	movl	%edi, pa(pgtable_brk)
#endif

	/* Only a paravirtualized boot (boot protocol 2.07+) can tell us
	 * what we're running on: hardware_subarch 1 is lguest. */
	cmpw	$0x207, pa(boot_params) + BP_version
	jb	default_entry
	movl	pa(boot_params) + BP_hardware_subarch, %eax
	cmpl	$1, %eax
	je	lguest_entry
	/* Xen, Moorestown and friends: we know none of them. */
bad_subarch:
	jmp	bad_subarch

	/* Bare hardware would load cr3 and turn paging on here; we have no
	 * drivers for bare hardware, and under lguest these instructions
	 * trap, which is the right end for a Launcher that forgot to say
	 * "lguest". */
default_entry:
	movl	$pa(swapper_pg_dir), %eax
	movl	%eax, %cr3
	jmp	bad_subarch

/*
 * lguest_entry, as in arch/x86/lguest/head_32.S: tell the Host where our
 * lguest_data is (the first hypercall), switch to our own page tables (the
 * Host's identity map goes away), take a stack and jump to the high
 * addresses, where C begins.
 */
	.globl lguest_entry
lguest_entry:
	movl	$LHCALL_LGUEST_INIT, %eax
	movl	$pa(lguest_data), %ebx
	int	$LGUEST_TRAP_ENTRY

	movl	$LHCALL_NEW_PGTABLE, %eax
	movl	$pa(swapper_pg_dir), %ebx
	int	$LGUEST_TRAP_ENTRY

	movl	$(boot_stack + BOOT_STACK_SIZE), %esp
	xorl	%ebp, %ebp
	movl	$lguest_init, %eax
	jmp	*%eax

	.section .rodata
	.balign 8
boot_gdt:				/* only for a boot without KEEP_SEGMENTS */
	.quad	0, 0
	.quad	0x00cf9a000000ffff	/* 0x10: flat code */
	.quad	0x00cf92000000ffff	/* 0x18: flat data */
boot_gdt_descr:
	.word	4 * 8 - 1
	.long	pa(boot_gdt)

	.section .bss..page_aligned, "aw", @nobits
	.balign	4096
	.globl swapper_pg_dir, boot_stack
swapper_pg_dir:				/* with PAE only its first 32 bytes are used */
	.skip	4096
#ifdef CONFIG_X86_PAE
	.globl kernel_pmd
kernel_pmd:
	.skip	4096
#endif
boot_stack:
	.skip	BOOT_STACK_SIZE

	.section .data
	.balign 4
	.globl max_pfn, mapped_end, pgtable_brk
max_pfn:	.long 0
mapped_end:	.long 0
pgtable_brk:	.long 0
