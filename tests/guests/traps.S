/* Scenarios for traps and faults (tests/test_host_traps.py). */
#include "lib.S"
	.data
scen_table:
	.long s_ring1, s_pf, s_user, s_nm, s_unhandled_ud, s_unhandled_pf, s_gdt_write
	.long s_io, s_sse, s_msr
done:	.long 0
	.text

start_traps:
	call init
	call setup_idt
	call irq_on
	ret

s_msr:                                /* 9: rdmsr/wrmsr before and after a #GP gate */
	call init
	movl $0x12345678, %eax
	movl $0x9abcdef0, %edx
	movl $0x17, %ecx
	rdmsr                             /* no IDT yet: the Host answers zeroes */
	orl %edx, %eax
	incl %eax
	NOTIFY %eax                       /* 1 (a NOTIFY of 0 is no NOTIFY) */
	wrmsr                             /* dropped */
	call setup_idt
	call irq_on
	movl $2, skip_len
msr_at:	rdmsr                             /* now the Guest's own #GP(0) */
	movl LOGCOUNT, %eax
	incl %eax
	NOTIFY %eax                       /* 2 */
	jmp poweroff

s_ring1:                              /* 0: #UD, #DE, int3, int $0x30, hlt from ring 1 */
	call start_traps
	movl $2, skip_len
ud_at:	ud2
	movl $2, skip_len
	xorl %ecx, %ecx
de_at:	divl %ecx
int3_at:
	int3
	movl $2, skip_len
int30_at:
	int $0x30                         /* DPL-0 gate: #GP((0x30 << 3) | 2) */
	movl $1, skip_len
hlt_at:	hlt                               /* #GP(0), not one emulate_insn knows */
	cli                               /* #GP(0), emulated: skipped, nothing logged */
	movl LOGCOUNT, %eax
	incl %eax
	NOTIFY %eax                       /* 6 */
	jmp poweroff

s_pf:                                 /* 1: the test built page tables at 0x200000 */
	call start_traps
	HC LHCALL_NEW_PGTABLE, $0x200000
	movl $5, skip_len
pf_read_at:
	movl 0x3ff000, %eax               /* not present: error 0 */
	movl $10, skip_len
pf_write_at:
	movl $1, 0x3fe000                 /* read-only: error 3 */
	movl $5, skip_len
pf_gdt_at:
	movl %eax, 0xffc00000             /* the Host's GDT page: read-only to us */
	movl 0xffc00000+0x60, %eax        /* but readable: our code segment descriptor */
	NOTIFY %eax
	movl LOGCOUNT, %eax
	incl %eax
	NOTIFY %eax                       /* 4 */
	jmp poweroff

s_user:                               /* 2: traps from ring 3 */
	call start_traps
	call set_kernel_stack
	movl $cb_user, on_trap
	movl $user_code, %eax
	jmp to_user
cb_user:
	cmpl $0x80, %ecx
	jne 1f
	cmpl $0, done
	jne poweroff
1:	ret
user_code:
	int $0x80
	movl $2, skip_len
user_hc_at:
	int $0x1f                         /* the hypercall gate is DPL 1: #GP(0xfa) */
	movl $1, skip_len
user_cli_at:
	cli                               /* #GP(0): emulate_insn() is for the kernel only */
	movl $5, skip_len
user_pf_at:
	movl 0x7ff00000, %eax             /* beyond the boot map: #PF, error 4 */
	movl $2, skip_len
user_int30_at:
	int $0x30                         /* DPL 0 gate from ring 3: #GP(0x182) */
	movl $1, done
	int $0x80

s_nm: /* 3: TS set: the FPU traps with #NM; the handler clears TS and retries */
	call start_traps
	movl $cb_nm, on_trap
	HC LHCALL_TS, $1
nm_at:	fninit
	fninit                            /* TS clear now: no trap */
	movl LOGCOUNT, %eax
	incl %eax
	NOTIFY %eax                       /* 2 */
	jmp poweroff
cb_nm:
	cmpl $7, %ecx
	jne 1f
	HC LHCALL_TS, $0
1:	ret

s_unhandled_ud:                       /* 4: no gates at all */
	call init
ud2_at:	ud2

s_unhandled_pf:                       /* 5 */
	call init
upf_at:	movl 0x7ff00000, %eax

s_gdt_write:                          /* 6: write the GDT with no #PF handler */
	call init
	movl %eax, 0xffc00008

s_io:                                 /* 7: in/out from the Guest kernel */
	call start_traps
	movl $0x12345600, %eax
	inb $0x60, %al
	NOTIFY %eax                       /* 0x123456ff */
	movl $0x12340000, %eax
	movw $0x3f8, %dx
	inw %dx, %ax
	NOTIFY %eax                       /* 0x1234ffff */
	movl $0x5, %eax
	inl %dx, %eax
	NOTIFY %eax                       /* 0xffffffff */
	outb %al, $0x80
	movl LOGCOUNT, %eax
	incl %eax
	NOTIFY %eax                       /* 1: nothing trapped */
	jmp poweroff

s_sse:                                /* 8: SSE and fxsave work as under a Linux Host */
	call start_traps
	movl $0x3f800000, 0x9000          /* 1.0f */
	movss 0x9000, %xmm0
	addss %xmm0, %xmm0
	movss %xmm0, 0x9004
	NOTIFY 0x9004                     /* 2.0f = 0x40000000 */
	fxsave 0xa000
	movl 0xa000 + 160, %eax           /* xmm0's low dword in the save area */
	NOTIFY %eax
	movl LOGCOUNT, %eax
	incl %eax
	NOTIFY %eax                       /* 1: no #UD */
	jmp poweroff
