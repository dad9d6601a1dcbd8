/*
 * user.c: one process at a time in ring 3, with its own page directory, and
 * the system calls it makes with int $0x80.
 *
 * The Host runs our kernel in ring 1 and user code in ring 3; a trap from
 * ring 3 arrives on the stack we named with SET_STACK (boot.c), after the
 * Host has pushed the user's ss and esp.  The process's code is copied to
 * USER_BASE; its stack and heap pages are mapped when first touched
 * (do_page_fault in mm.c).
 */
#include "core.h"

#define USER_BASE	0x08048000u	/* where i386 Linux puts a program */
#define USER_STACK_TOP	0xBFFFF000u
#define SYS_exit	1
#define SYS_write	4
#define SYS_getpid	20

u32 user_kernel_esp;
static struct user_result *cur;
static u32 faults_at_start;

static int user_range_ok(u32 addr, u32 len)
{
	return addr < PAGE_OFFSET && len <= PAGE_OFFSET - addr;
}

/* The int $0x80 handler; the return value goes back in %eax. */
int sys_call(struct pt_regs *regs)
{
	if (cur)
		cur->kstack_seen = (u32)regs;
	switch (regs->eax) {
	case SYS_exit:
		cur->exited = 1;
		cur->code = regs->ebx;
		user_return(1);
	case SYS_write: {
		u32 buf = regs->ecx, len = regs->edx;
		if (regs->ebx != 1 && regs->ebx != 2) {
			regs->eax = -9;		/* EBADF */
			break;
		}
		if (!user_range_ok(buf, len)) {
			regs->eax = -14;	/* EFAULT */
			break;
		}
		/* The kernel reads user memory directly: the page fault
		 * handler maps anything not yet there. */
		for (u32 i = 0; i < len && cur->out_len < sizeof(cur->out) - 1; i++)
			cur->out[cur->out_len++] = ((const char *)buf)[i];
		cur->out[cur->out_len] = '\0';
		console_write((const char *)buf, len);
		regs->eax = len;
		break;
	}
	case SYS_getpid:
		regs->eax = 1;
		break;
	default:
		regs->eax = -38;		/* ENOSYS */
	}
	return 1;
}

/* A trap from ring 3 nobody could handle: the process dies with it. */
void user_killed(struct pt_regs *regs)
{
	cur->exited = 0;
	cur->code = regs->vector;
	user_return(1);
}

/*
 * Run one program: a fresh page directory, the code copied into pages at
 * USER_BASE, user_enter() into ring 3 at USER_BASE + entry_off with the
 * stack at USER_STACK_TOP (no page there yet: the first push faults it in).
 * Returns 0 when the process ended (res says how), -1 if out of memory.
 */
int run_user(const void *code, size_t len, u32 entry_off, struct user_result *res)
{
	pgd_t *pgdir = new_user_pgdir();
	pgd_t *old = current_pgdir;
	u32 flags;

	if (!pgdir)
		return -1;
	memset(res, 0, sizeof(*res));
	/* Build the address space in lazy MMU mode, as Linux does for exec:
	 * the SET_PTEs go through the async ring, flushed once at the end. */
	lazy_mmu_enter();
	for (u32 off = 0; off < len; off += PAGE_SIZE) {
		u8 *page = alloc_pages(1);
		if (!page) {
			lazy_mmu_leave();
			return -1;
		}
		memcpy(page, (const u8 *)code + off, len - off < PAGE_SIZE ? len - off : PAGE_SIZE);
		map_page(pgdir, USER_BASE + off, __pa(page), _PAGE_USER);	/* read-only */
	}
	lazy_mmu_leave();
	flags = irq_save();
	cur = res;
	faults_at_start = pf_count;
	load_pgdir(pgdir);
	user_enter(USER_BASE + entry_off, USER_STACK_TOP);
	/* Back from user_return(): on the trap stack's caller, ring 1. */
	load_pgdir(old);
	res->faults = pf_count - faults_at_start;
	cur = NULL;
	irq_restore(flags);
	return 0;
}
