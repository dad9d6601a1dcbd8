/*
 * core.h: what the parts of the Guest core share among themselves (not part
 * of the driver contract in kernel.h).
 */
#ifndef GUEST_CORE_H
#define GUEST_CORE_H
#include "kernel.h"
#include "lguest.h"
#include <stdarg.h>

int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap);
int vprintk(const char *fmt, va_list ap);

/* The registers entry.S saves for a trap, interrupt or system call, lowest
 * address first (like Linux's struct pt_regs for i386).  The part from eip on
 * was pushed by the Host as it delivered, the way the CPU would: esp and ss
 * only when the trap came from ring 3. */
struct pt_regs {
	u32 ebx, ecx, edx, esi, edi, ebp, eax;
	u32 ds, es, fs, gs;
	u32 vector, error_code;
	u32 eip, cs, eflags;
	u32 esp, ss;			/* only valid if (cs & 3) == 3 */
};

static inline int user_mode(const struct pt_regs *r) { return (r->cs & 3) == 3; }

/* console.c / boot.c: where printk's bytes go. */
void console_write(const char *s, size_t len);
void early_puts(const char *s, size_t len);	/* NOTIFY, as early_put_chars() */

/* irq.c */
void idt_init(void);
void set_idt_gate(unsigned int vector, void *handler, int trap_gate, int dpl);
void clear_idt_gate(unsigned int vector);
void *entry_stub(unsigned int vector);	/* entry.S stub, or NULL */
/* A trap handler: return 1 if handled (resume at regs->eip), 0 if not. */
typedef int (*trap_fn)(struct pt_regs *regs);
trap_fn set_trap_handler(unsigned int vector, trap_fn fn);	/* returns the old one */
extern volatile u32 irq_count[32];	/* IRQs delivered, per line */
extern u32 irq_nested;			/* ...of which arrived while disabled */
extern u32 irq_from_user;		/* ...of which interrupted ring 3 */
/* entry.S: spin inside the noirq window; irq_count[0] at entry and exit. */
u32 noirq_spin(u32 cycles, u32 *entry_count);

/* mm.c.  One entry type for every level: 32 bits, or 64 with PAE. */
#ifdef CONFIG_X86_PAE
typedef u64 pte_t;
#define _PAGE_NX	(1ull << 63)	/* execute-disable */
#else
typedef u32 pte_t;
#endif
typedef pte_t pmd_t;
typedef pte_t pgd_t;
#define PTE_PFN_MASK	((pte_t)0xFFFFF000u)	/* our memory is all below 4 GiB */
#define DEMAND_BASE	0xFF800000u	/* kernel window mapped on first touch, */
#define DEMAND_END	0xFFC00000u	/* just above the linear map (head.S) */
extern pgd_t swapper_pg_dir[];		/* head.S: the kernel's top level */
void set_pte(pgd_t *pgdir, u32 vaddr, pte_t pte);	/* write + SET_PTE (lazy) */
void set_pgd(pgd_t *pgdir, unsigned int index, pgd_t pgd);	/* write + SET_PGD */
/* The entry over vaddr's page table (the PDE, or with PAE the PMD entry),
 * written + SET_PGD / SET_PMD, as Linux's lguest_set_pmd() in either build. */
void set_pmd(pgd_t *pgdir, u32 vaddr, pmd_t pmd);
pmd_t *lookup_pmd(pgd_t *pgdir, u32 vaddr, int create);
pte_t *lookup_pte(pgd_t *pgdir, u32 vaddr, int create);
void map_page(pgd_t *pgdir, u32 vaddr, u32 paddr, pte_t flags);
void flush_tlb_all(void);
void load_pgdir(pgd_t *pgdir);		/* NEW_PGTABLE */
pgd_t *new_user_pgdir(void);		/* kernel half copied from swapper_pg_dir */
extern pgd_t *current_pgdir;
extern volatile u32 pf_count, pf_last_cr2, pf_last_err;
int do_page_fault(struct pt_regs *regs);
void mm_init(void);

/* user.c */
struct user_result {
	int exited;			/* 1: exit(), 0: killed by a trap */
	int code;			/* exit status, or the trap number */
	u32 faults;			/* page faults it took */
	char out[256];			/* what it wrote to fd 1 */
	u32 out_len;
	u32 kstack_seen;		/* esp of the last syscall frame */
};
int run_user(const void *code, size_t len, u32 entry_off, struct user_result *res);
int sys_call(struct pt_regs *regs);	/* the int $0x80 handler */
void user_killed(struct pt_regs *regs) __attribute__((noreturn));	/* trap in ring 3 */
extern u32 user_kernel_esp;		/* entry.S: the stack user_enter left */
int user_enter(u32 eip, u32 esp);	/* entry.S: returns user_return()'s value */
void user_return(int value) __attribute__((noreturn));
extern char user_hello_start[], user_hello_end[];
extern char user_hcall_start[], user_hcall_end[];
extern char user_kread_start[], user_kread_end[];
extern char user_spin_start[], user_spin_end[];
void set_kernel_stack(void *base, unsigned int pages);	/* SET_STACK */
extern u8 trap_stack[8192];

/* boot.c */
void lguest_load_gdt_entry(unsigned int index, u32 lo, u32 hi);
void lguest_load_tls(const u32 desc[6]);
u32 make_seg_lo(u32 base, u32 limit);
u32 make_seg_hi(u32 base, u32 limit, u32 type_dpl);
void timer_init(void);
void set_clockevent(u64 delta_ns);
extern volatile u32 timer_fired;
extern u32 reserve_top;			/* lowest address the Host keeps */
extern int console_up;
extern u32 tsc_khz;			/* main.c: from the Host or calibrated */

/* tests.c / main.c */
void run_tests(const char *list);
void run_bad(const char *name);
void main_demo(void);

static inline void cpu_relax(void) { asm volatile("rep; nop" ::: "memory"); }
static inline u64 rdtsc64(void)
{
	u32 lo, hi;
	asm volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return ((u64)hi << 32) | lo;
}
/* TSC ticks to nanoseconds, once tsc_khz is known (0 if it isn't). */
static inline u32 tsc_to_ns(u64 ticks)
{
	extern u32 tsc_khz;
	return tsc_khz ? (u32)(ticks * 1000000ull / tsc_khz) : 0;
}
static inline u32 rdtsc_lo(void)
{
	u32 lo, hi;
	asm volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return lo;
}
#endif
