/*
 * lguest.h: the lguest Guest ABI as Linux 3.16 defines it, for our Guest.
 *
 * The numbers are those of arch/x86/include/asm/lguest_hcall.h,
 * include/linux/lguest.h and arch/x86/include/asm/bootparam.h (DESIGN.md §4);
 * the layout of struct lguest_data is checked field by field below.  head.S
 * includes this file too, so the C parts are fenced off from the assembler.
 */
#ifndef GUEST_LGUEST_H
#define GUEST_LGUEST_H

/* Hypercalls: "int $0x1F" with the number in %eax, arguments in %ebx, %ecx,
 * %edx, %esi, result in %eax (LGUEST_TRAP_ENTRY in lguest_hcall.h). */
#define LGUEST_TRAP_ENTRY	0x1F
#define LHCALL_FLUSH_ASYNC	0
#define LHCALL_LGUEST_INIT	1
#define LHCALL_SHUTDOWN		2
#define LHCALL_NEW_PGTABLE	4
#define LHCALL_FLUSH_TLB	5
#define LHCALL_LOAD_IDT_ENTRY	6
#define LHCALL_SET_STACK	7
#define LHCALL_TS		8
#define LHCALL_SET_CLOCKEVENT	9
#define LHCALL_HALT		10
#define LHCALL_SET_PMD		13	/* PAE builds only */
#define LHCALL_SET_PTE		14
#define LHCALL_SET_PGD		15
#define LHCALL_LOAD_TLS		16
#define LHCALL_NOTIFY		17
#define LHCALL_LOAD_GDT_ENTRY	18
#define LHCALL_SEND_INTERRUPTS	19

#define LGUEST_SHUTDOWN_POWEROFF 1
#define LGUEST_SHUTDOWN_RESTART	 2

/* The async hypercall ring inside lguest_data (LHCALL_RING_SIZE). */
#define LHCALL_RING_SIZE	64

/* Offsets into struct lguest_data, for head.S (asm-offsets on Linux). */
#define LGUEST_DATA_irq_enabled	0
#define LGUEST_DATA_irq_pending	20

/* The interrupt flag, which is all irq_enabled ever holds (0 or 0x200). */
#define X86_EFLAGS_IF		0x200

/* Segments.  The Host starts us with its own kernel segments, GDT entries
 * 12 and 13 with RPL 1 (LGUEST_CS/LGUEST_DS): the Guest kernel runs in ring 1.
 * User code and data are Linux's GDT entries 14 and 15, with RPL 3. */
#define LGUEST_CS		0x61
#define LGUEST_DS		0x69
#define GDT_ENTRY_TLS_MIN	6
#define GDT_ENTRY_KERNEL_CS	12
#define GDT_ENTRY_KERNEL_DS	13
#define GDT_ENTRY_DEFAULT_USER_CS 14
#define GDT_ENTRY_DEFAULT_USER_DS 15
#define GDT_ENTRIES		32
#define USER_CS			(GDT_ENTRY_DEFAULT_USER_CS * 8 + 3)	/* 0x73 */
#define USER_DS			(GDT_ENTRY_DEFAULT_USER_DS * 8 + 3)	/* 0x7b */

#define FIRST_EXTERNAL_VECTOR	0x20	/* IRQ n arrives on vector 0x20 + n */
#define SYSCALL_VECTOR		0x80

/* boot_params ("the zero page") offsets the Launcher fills (bootparam.h). */
#define BP_e820_entries		0x1E8
#define BP_version		0x206
#define BP_loadflags		0x211
#define BP_cmd_line_ptr		0x228
#define BP_hardware_subarch	0x23C
#define BP_e820_map		0x2D0
#define KEEP_SEGMENTS		0x40
#define PARAM_SIZE		4096
#define COMMAND_LINE_SIZE	2048
#define E820_RAM		1

/* Guest-physical memory: where Linux puts its kernel, and the device page
 * (DESIGN §3): 256 pages of descriptors and vrings just above RAM. */
#define LGUEST_DEVICE_PAGES	256

/*
 * Page tables.  The default build has Linux's non-PAE two levels: a page
 * directory of 1024 32-bit entries, each over a page table of 1024.  The PAE
 * build (CONFIG_X86_PAE, guest-pae.elf) has Linux's three: a "pgd" of four
 * 64-bit entries (1 GiB each), each over a PMD page of 512 (2 MiB each), each
 * over a page table of 512; the top-level entries hold nothing but
 * _PAGE_PRESENT (PGD_IDENT_ATTR), and bit 63 of the others is NX.
 */
#define _PAGE_PRESENT		0x001
#define _PAGE_RW		0x002
#define _PAGE_USER		0x004
#define _PAGE_ACCESSED		0x020
#define _PAGE_DIRTY		0x040
#define _PAGE_TABLE		(_PAGE_PRESENT | _PAGE_RW | _PAGE_USER | _PAGE_ACCESSED | _PAGE_DIRTY)
#define _KERNPG_TABLE		(_PAGE_PRESENT | _PAGE_RW | _PAGE_ACCESSED | _PAGE_DIRTY)
#define PTE_IDENT_ATTR		0x003	/* present and writable, as head_32.S */
#define PDE_IDENT_ATTR		0x063	/* present, writable, accessed, dirty */
#define PGD_IDENT_ATTR		0x001	/* PAE top level: present, nothing else */
#ifdef CONFIG_X86_PAE
#define PTRS_PER_PGD		4
#define PTRS_PER_PMD		512
#define PTRS_PER_PTE		512
#define PGDIR_SHIFT		30
#define PMD_SHIFT		21
#define PTE_SIZE		8
#else
#define PTRS_PER_PGD		1024
#define PTRS_PER_PTE		1024
#define PGDIR_SHIFT		22
#define PMD_SHIFT		22	/* the middle level folds into the top one */
#define PTE_SIZE		4
#endif

#ifndef __ASSEMBLY__
#include "kernel.h"

/* The page shared between the Guest and Host (struct lguest_data in
 * include/linux/lguest.h): 1392 bytes, every field at the offset DESIGN §4
 * lists (checked by the static asserts below). */
struct hcall_args {
	u32 arg0, arg1, arg2, arg3, arg4;	/* arg0 is the call number */
};

struct lguest_data {
	u32 irq_enabled;		/* 0x200 = enabled, as eflags' IF */
	u32 blocked_interrupts;		/* bit n set: the Host holds IRQ n back */
	u32 cr2;			/* the faulting address of a #PF */
	u32 time_sec, time_nsec;	/* wall time, written by the Host */
	u32 irq_pending;		/* the Host says an IRQ waits for us */
	u8 hcall_status[LHCALL_RING_SIZE];	/* 0xFF free, 0 ready to run */
	struct hcall_args hcalls[LHCALL_RING_SIZE];
	/* Fields the Host fills at LGUEST_INIT: */
	u32 reserve_mem;		/* bytes the Host keeps at the top */
	u32 tsc_khz;			/* 0: we calibrate from the timer */
	/* Fields we fill before LGUEST_INIT: */
	u32 noirq_start, noirq_end;	/* no interrupts while eip is in here */
	u32 kernel_address;		/* PAGE_OFFSET */
	u32 syscall_vec;		/* the system call trap vector, 0x80 */
};

_Static_assert(__builtin_offsetof(struct lguest_data, cr2) == 8, "cr2");
_Static_assert(__builtin_offsetof(struct lguest_data, time_sec) == 12, "time");
_Static_assert(__builtin_offsetof(struct lguest_data, irq_pending) == 20, "irq_pending");
_Static_assert(__builtin_offsetof(struct lguest_data, hcall_status) == 24, "hcall_status");
_Static_assert(__builtin_offsetof(struct lguest_data, hcalls) == 88, "hcalls");
_Static_assert(__builtin_offsetof(struct lguest_data, reserve_mem) == 1368, "reserve_mem");
_Static_assert(__builtin_offsetof(struct lguest_data, noirq_start) == 1376, "noirq_start");
_Static_assert(__builtin_offsetof(struct lguest_data, syscall_vec) == 1388, "syscall_vec");
_Static_assert(sizeof(struct lguest_data) == 1392, "sizeof lguest_data");

extern struct lguest_data lguest_data;

/* How many hypercalls we made, by number: through the trap (hcall(), and the
 * two in head.S) and queued in the async ring (async_hcall()).  lghcalls=1
 * prints them at power off; the Host's --stats counts the same two things. */
#define LHCALL_COUNTED		32
extern u32 hcalls_trapped[LHCALL_COUNTED], hcalls_queued[LHCALL_COUNTED];

/* The one way into the Host: hcall() in lguest_hcall.h.  "memory" because the
 * Host reads and writes our memory (lguest_data, page tables, strings). */
static inline u32 hcall(u32 call, u32 arg1, u32 arg2, u32 arg3, u32 arg4)
{
	if (call < LHCALL_COUNTED)
		hcalls_trapped[call]++;
	asm volatile("int $0x1f"
		     : "+a"(call)
		     : "b"(arg1), "c"(arg2), "d"(arg3), "S"(arg4)
		     : "memory");
	return call;
}

/* Batched ("lazy") hypercalls, mirroring async_hcall/lazy_hcall in boot.c. */
void lazy_mmu_enter(void);
void lazy_mmu_leave(void);		/* flushes the ring: FLUSH_ASYNC */
void lazy_hcall(u32 call, u32 arg1, u32 arg2, u32 arg3, u32 arg4);
void async_hcall(u32 call, u32 arg1, u32 arg2, u32 arg3, u32 arg4);

/* The copies startup_32 made (head.S), and its results. */
extern u8 boot_params[PARAM_SIZE];
extern char boot_command_line[COMMAND_LINE_SIZE];
extern u32 pgtable_brk;		/* physical end of the page tables head.S built */
extern u32 max_pfn;			/* pages of RAM: the device page is at max_pfn << 12 */
extern u32 mapped_end;			/* physical end of what head.S mapped */

/* head.S symbols. */
extern char lguest_noirq_start[], lguest_noirq_end[];
extern char lguest_iret[];
extern char _text[], _etext[], _end[], __bss_start[], __bss_stop[];

/* Small privileged-looking helpers (all unprivileged in fact). */
static inline u32 read_eflags(void)
{
	u32 f;
	asm volatile("pushfl; popl %0" : "=r"(f));
	return f;
}
#endif /* __ASSEMBLY__ */
#endif
