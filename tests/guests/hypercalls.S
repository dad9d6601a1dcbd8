/* Scenarios for the hypercall tests (tests/test_host_hypercalls.py). */
#include "lib.S"
	.data
scen_table:
	.long s_before_init, s_init_twice, s_bad_hcall, s_powerdown, s_restart, s_notify
	.long s_async, s_bad_lguest_data, s_gdt, s_tls, s_panic, s_bad_syscall_vec
	.long s_async_wrap, s_set_pmd
	.text

s_before_init:                        /* 0: anything but LGUEST_INIT first */
	HC LHCALL_FLUSH_TLB, $1
	jmp poweroff

s_init_twice:                         /* 1 */
	call init
	NOTIFY $0x100
	call init
	jmp poweroff

s_bad_hcall:                          /* 2 */
	call init
	HC 99
	jmp poweroff

s_powerdown:                          /* 3 */
	call init
	jmp poweroff

s_restart:                            /* 4 */
	call init
	HC LHCALL_SHUTDOWN, $msg_reboot, $2
	jmp poweroff

s_notify:                             /* 5: two NOTIFYs, with work between */
	call init
	NOTIFY $0x1234
	movl $1000, %ecx
1:	loop 1b
	NOTIFY $0x5678
	/* report what LGUEST_INIT wrote: reserve_mem, tsc_khz, time.tv_sec */
	NOTIFY lguest_data+1368
	movl lguest_data+1372, %eax
	incl %eax                         /* NOTIFY 0 would be no NOTIFY at all */
	NOTIFY %eax
	NOTIFY lguest_data+12
	jmp poweroff

s_async:                              /* 6: queue NOTIFY A1, NOTIFY A2, then sync NOTIFY A3 */
	call init
	movl $17, lguest_data+88
	movl $0xA1, lguest_data+88+4
	movl $17, lguest_data+88+20
	movl $0xA2, lguest_data+88+24
	movb $0, lguest_data+24
	movb $0, lguest_data+25
	NOTIFY $0xA3
	/* status bytes after: both 0xff */
	movzbl lguest_data+24, %eax
	movzbl lguest_data+25, %ebx
	shll $8, %ebx
	orl %ebx, %eax
	NOTIFY %eax
	/* now an async SET_CLOCKEVENT-free sequence: LOAD_IDT_ENTRY queued, then check it works */
	movl $6, lguest_data+88+40            /* slot 2: LOAD_IDT_ENTRY(0x21, lo, hi) */
	movl $0x21, lguest_data+88+44
	movl $stub_33, %eax
	andl $0xffff, %eax
	orl $(0x60 << 16), %eax
	movl %eax, lguest_data+88+48
	movl $stub_33, %eax
	andl $0xffff0000, %eax
	orl $0x8e00, %eax
	movl %eax, lguest_data+88+52
	movb $0, lguest_data+26
	movl $0x200, lguest_data              /* irqs on */
	HC LHCALL_FLUSH_ASYNC                 /* runs slot 2 */
	NOTIFY $0xA4                          /* the test raises IRQ 1 now */
	NOTIFY LOGCOUNT
	jmp poweroff

s_bad_lguest_data:                    /* 7: lguest_data outside memory */
	HC LHCALL_LGUEST_INIT, $0x7ffff000
	jmp poweroff

s_gdt:                                /* 8: LOAD_GDT_ENTRY a DPL-0 data segment, use it */
	call init
	/* entry 20: flat data, DPL 0 (Host raises it to 1), base 0x1000 */
	HC LHCALL_LOAD_GDT_ENTRY, $20, $0x1000ffff, $0x00cf9200
	movw $(20*8+1), %ax
	movw %ax, %fs
	movl %fs:0x7000, %eax             /* reads physical 0x8000: the log count (0) */
	movl $0xfeedf00d, 0x8000
	movl %fs:0x7000, %eax
	NOTIFY %eax
	/* entry 10 (LGUEST_CS) is the Host's: the load is ignored */
	HC LHCALL_LOAD_GDT_ENTRY, $10, $0, $0
	/* too many */
	HC LHCALL_LOAD_GDT_ENTRY, $32, $0, $0
	jmp poweroff

s_tls:                                /* 9: LOAD_TLS three descriptors, %gs on entry 6 */
	call init
	movw $(6*8+3), %ax                /* null-ish first: loads fine after TLS */
	HC LHCALL_LOAD_TLS, $tls_descs
	movw $(7*8+1), %ax
	movw %ax, %gs
	movl %gs:0, %eax                  /* base 0x7004: PARAM0 */
	NOTIFY %eax
	/* change entry 7's base with another LOAD_TLS: %gs follows without a reload */
	movl $0x7008ffff, tls_descs+8
	HC LHCALL_LOAD_TLS, $tls_descs
	movl %gs:0, %eax                  /* now PARAM1 */
	NOTIFY %eax
	jmp poweroff

s_panic:                              /* 10: SHUTDOWN with another message, POWEROFF */
	call init
	HC LHCALL_SHUTDOWN, $msg_panic, $1
	jmp poweroff

s_bad_syscall_vec:                    /* 11 */
	movl $0x40, lguest_data+1388
	call init
	jmp poweroff

s_async_wrap:                         /* 12: 70 queued no-ops around the ring, in order */
	call init
	xorl %edi, %edi
1:	movl %edi, %eax
	andl $63, %eax
	imull $20, %eax, %ebx
	movl $0, lguest_data+88(%ebx)     /* FLUSH_ASYNC */
	movb $0, lguest_data+24(%eax)
	cmpl $63, %eax
	jne 2f
	HC LHCALL_FLUSH_ASYNC             /* the ring is full: let the Host drain it */
2:	incl %edi
	cmpl $70, %edi
	jne 1b
	HC LHCALL_FLUSH_ASYNC
	/* all free again? */
	xorl %eax, %eax
	xorl %ecx, %ecx
3:	movzbl lguest_data+24(%ecx), %ebx
	addl %ebx, %eax
	incl %ecx
	cmpl $64, %ecx
	jne 3b
	NOTIFY %eax                       /* 64 * 0xff */
	jmp poweroff

s_set_pmd:                            /* 13: a PAE-only call on our non-PAE Host */
	call init
	HC 13
	jmp poweroff

	.data
msg_reboot:	.asciz "Rebooting"
msg_panic:	.asciz "Kernel panic - not syncing: test"
	.align 8
tls_descs:
	.long 0x7000ffff, 0x00cff200      /* entry 6: base 0x7000, DPL 3 */
	.long 0x7004ffff, 0x00cf9200      /* entry 7: base 0x7004, DPL 0 -> 1 */
	.long 0, 0
	.text
