"""The Host side of the lguest ABI (Linux 3.16): numbers and layouts.

Everything here is a fact shared with the Guest (arch/x86/include/asm/lguest_hcall.h,
include/linux/lguest.h, include/linux/lguest_launcher.h, asm/lguest.h, asm/segment.h).
No behaviour lives in this file; the rest of host/ imports from it.
"""

# --- /dev/lguest requests (lguest_launcher.h: enum lguest_req) -----------------------
LHREQ_INITIALIZE = 0        # (base, pfnlimit, start): 3.16 takes no page table argument
LHREQ_GETDMA = 1            # long gone; a write of it is EINVAL
LHREQ_IRQ = 2               # (irq): make an interrupt pending
LHREQ_BREAK = 3             # (1): Waker stops the Guest; (0): Launcher releases the Waker
                            # (2.6.24's protocol; 3.16 says "no longer used": EINVAL)
LHREQ_EVENTFD = 4           # (address, fd): 3.16; a NOTIFY of address signals the eventfd

# --- Hypercalls (asm/lguest_hcall.h) --------------------------------------------------
LHCALL_FLUSH_ASYNC = 0
LHCALL_LGUEST_INIT = 1
LHCALL_SHUTDOWN = 2
LHCALL_NEW_PGTABLE = 4
LHCALL_FLUSH_TLB = 5
LHCALL_LOAD_IDT_ENTRY = 6
LHCALL_SET_STACK = 7
LHCALL_TS = 8
LHCALL_SET_CLOCKEVENT = 9
LHCALL_HALT = 10
LHCALL_SET_PMD = 13         # PAE Guests only (a "Bad hypercall" from a non-PAE Guest)
LHCALL_SET_PTE = 14
LHCALL_SET_PGD = 15
LHCALL_LOAD_TLS = 16
LHCALL_NOTIFY = 17
LHCALL_LOAD_GDT_ENTRY = 18
LHCALL_SEND_INTERRUPTS = 19

LGUEST_TRAP_ENTRY = 0x1F    # "int $0x1f" is the hypercall trap

LGUEST_SHUTDOWN_POWEROFF = 1
LGUEST_SHUTDOWN_RESTART = 2

LHCALL_RING_SIZE = 64       # async hypercall ring entries
LGUEST_IRQS = 32            # interrupts the Host keeps track of (one u32 bitmap)

# --- struct lguest_data (include/linux/lguest.h, 3.16 i386) ---------------------------
LGUEST_DATA_SIZE = 1392
LD_IRQ_ENABLED = 0          # u32: 0 or X86_EFLAGS_IF
LD_BLOCKED_INTERRUPTS = 4   # u32 bitmap of LGUEST_IRQS
LD_CR2 = 8                  # u32: the Host writes the fault address before a #PF
LD_TIME = 12                # struct timespec {s32 tv_sec; s32 tv_nsec}
LD_IRQ_PENDING = 20         # u32: X86_EFLAGS_IF when an interrupt waits for the Guest
LD_HCALL_STATUS = 24        # u8[64]: 0xFF = free, 0 = pending
LD_HCALLS = 88              # struct hcall_args[64]: five u32 (arg0..arg4)
LD_RESERVE_MEM = 1368       # u32: top of virtual memory the Guest must keep out of
LD_TSC_KHZ = 1372           # u32: 0 = "calibrate from the timer"
LD_NOIRQ_START = 1376       # u32: [noirq_start, noirq_end) never gets an interrupt
LD_NOIRQ_END = 1380
LD_KERNEL_ADDRESS = 1384    # u32: PAGE_OFFSET
LD_SYSCALL_VEC = 1388       # u32: the Guest's system call vector (0x80)
HCALL_ARGS_SIZE = 20

# --- Privilege levels and segments (asm/segment.h, asm/lguest.h) ----------------------
GUEST_PL = 1
GDT_ENTRIES = 32
GDT_ENTRY_TLS_MIN = 6
GDT_ENTRY_TLS_ENTRIES = 3
GDT_ENTRY_TLS_MAX = GDT_ENTRY_TLS_MIN + GDT_ENTRY_TLS_ENTRIES - 1
GDT_ENTRY_LGUEST_CS = 10
GDT_ENTRY_LGUEST_DS = 11
GDT_ENTRY_KERNEL_CS = 12
GDT_ENTRY_KERNEL_DS = 13
GDT_ENTRY_TSS = 16
GDT_ENTRY_DOUBLEFAULT_TSS = 31
__KERNEL_CS = GDT_ENTRY_KERNEL_CS * 8            # 0x60
__KERNEL_DS = GDT_ENTRY_KERNEL_DS * 8            # 0x68
LGUEST_CS = GDT_ENTRY_LGUEST_CS * 8              # 0x50
LGUEST_DS = GDT_ENTRY_LGUEST_DS * 8              # 0x58
GUEST_CS = __KERNEL_CS | GUEST_PL                # 0x61: the Guest kernel's %cs
GUEST_DS = __KERNEL_DS | GUEST_PL                # 0x69: its %ds, %es, %ss

# Flat 4 GiB segments, as FULL_EXEC_SEGMENT / FULL_SEGMENT in asm/lguest.h (DPL 0).
FULL_EXEC_SEGMENT = (0x0000FFFF, 0x00CF9B00)
FULL_SEGMENT = (0x0000FFFF, 0x00CF9300)

IDT_ENTRIES = 256
FIRST_EXTERNAL_VECTOR = 0x20
SYSCALL_VECTOR = 0x80

# --- eflags, CR0, paging bits -----------------------------------------------------
X86_EFLAGS_TF = 0x00000100
X86_EFLAGS_IF = 0x00000200
X86_EFLAGS_NT = 0x00004000
X86_EFLAGS_RF = 0x00010000
X86_EFLAGS_VM = 0x00020000
X86_EFLAGS_FIXED = 0x00000002

X86_CR0_PE = 0x00000001
X86_CR0_MP = 0x00000002
X86_CR0_TS = 0x00000008
X86_CR0_ET = 0x00000010
X86_CR0_NE = 0x00000020
X86_CR0_WP = 0x00010000
X86_CR0_PG = 0x80000000
X86_CR4_PSE = 0x00000010
X86_CR4_PAE = 0x00000020
X86_CR4_OSFXSR = 0x00000200
X86_CR4_OSXMMEXCPT = 0x00000400

_PAGE_PRESENT = 0x001
_PAGE_RW = 0x002
_PAGE_USER = 0x004
_PAGE_ACCESSED = 0x020
_PAGE_DIRTY = 0x040
_PAGE_PSE = 0x080
_PAGE_TABLE = _PAGE_PRESENT | _PAGE_RW | _PAGE_USER | _PAGE_ACCESSED | _PAGE_DIRTY

PAGE_SIZE = 4096
PAGE_SHIFT = 12
PTRS_PER_PGD = 1024
PGDIR_SHIFT = 22

# PAE (CONFIG_X86_PAE, asm/pgtable-3level_types.h): 64-bit entries, three levels.  The top
# level is a 4-entry "page directory pointer table" (Linux's pgd, 32-byte aligned) whose
# entries may carry only _PAGE_PRESENT; each points at a 512-entry PMD page (2 MiB per
# entry), each PMD at a 512-entry page table.  Physical addresses have 44 bits
# (__PHYSICAL_MASK_SHIFT): the bits above them, like the low 12, are "flags".
PTRS_PER_PGD_PAE = 4
PTRS_PER_PMD = 512
PTRS_PER_PTE_PAE = 512
PGDIR_SHIFT_PAE = 30
PMD_SHIFT = 21
PTE_PFN_MASK_PAE = ((1 << 44) - 1) & ~(PAGE_SIZE - 1)
MSR_EFER = 0xC0000080
EFER_NX = 0x00000800

# Where the Switcher lived: the top 4 MiB of every Guest address space.  The Guest is
# told to keep out of it (lguest_data.reserve_mem); we keep the Host's GDT there.
SWITCHER_ADDR = 0xFFC00000
SWITCHER_PGD_INDEX = PTRS_PER_PGD - 1
RESERVE_MEM = 0x100000000 - SWITCHER_ADDR        # 4 MiB
# The same 4 MiB under PAE: the top PGD entry, and in the PMD page it points at the last
# two entries (2 MiB each).
SWITCHER_PGD_INDEX_PAE = PTRS_PER_PGD_PAE - 1
SWITCHER_PMD_INDEX = (SWITCHER_ADDR >> PMD_SHIFT) & (PTRS_PER_PMD - 1)     # 510
