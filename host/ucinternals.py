"""The one module that knows unicorn 2.1.4's insides.

unicorn never delivers an interrupt through the IDT: every fault and every "int n" comes
to a Python hook, and the Host delivers it to the Guest itself, as the real Host's
deliver_trap() did after the Switcher bounced out.  Three things that needs are not in
unicorn's public API:

  * the #PF error code (the Switcher got it from the CPU's trap frame),
  * the CPU's "exception in flight" state, which unicorn never clears (upstream issue
    #1883: after one fault the next arrives as a double fault, the third as a silent
    triple-fault return from emu_start), and
  * the current privilege level, which lives in the hidden hflags word.

They all live in QEMU's CPUX86State ("env") inside the engine.  We find env by planting
register values and searching for them, check every offset we rely on against the public
register API, and refuse to run on an engine whose layout we do not recognise.  The same
memory gives us the general registers without the binding's per-call overhead, which is
what keeps a hypercall round trip near a microsecond.

The engine itself is unicorn 2.1.4 built with our patches (patches/unicorn/): guest stores
to pages without translated code take the inline fast path, a stop asked in the middle of
a block lands at the next block boundary, a TLB flush can be one page, and a block's exit
test is inline.  The first engine of a process checks the first two on a scratch engine
(check_engine_patches()) and we refuse to run on one that lacks them; without the other
two we are only slower.

Layout (x86_64-hosted unicorn 2.1.4 wheel; QEMU 5.0's CPUX86State):
  regs[16]  u64 @0   (EAX ECX EDX EBX ESP EBP ESI EDI ...)
  eip       u64 @128          eflags u64 @136 (condition codes live elsewhere)
  hflags    u32 @176          (CPL in bits 0..1)
  segs[6]   @184, 24 bytes each {u32 selector; u64 base; u32 limit; u32 flags}
            in the order ES CS SS DS FS GS
  cr[5]     u64 @424          (cr0, -, cr2, cr3, cr4)
  error_code s32 @5384, exception_is_int s32 @5388, exception_next_eip u64 @5392,
  old_exception s32 @5496
"""

import ctypes
import os
import struct
import threading

import unicorn
from unicorn import x86_const as X
from unicorn.unicorn_const import UC_CTL_IO_WRITE, UC_CTL_TLB_FLUSH
from unicorn.unicorn_py3.unicorn import uclib

REQUIRED_VERSION = "2.1.4"

OFF_EIP = 128
OFF_EFLAGS = 136
OFF_HFLAGS = 176
OFF_SEGS = 184
SEG_SIZE = 24
OFF_CR = 424
OFF_ERROR_CODE = 5384
OFF_IS_INT = 5388
OFF_NEXT_EIP = 5392
OFF_OLD_EXCEPTION = 5496
ENV_SPAN = 5504                 # bytes of env we map (covers every field above)

HF_CPL_MASK = 3
EXCP08_DBLE = 8                 # old_exception after a double fault

# env->segs[] is in QEMU's order (R_ES, R_CS, R_SS, R_DS, R_FS, R_GS).
SEGMENT_NAMES = ("es", "cs", "ss", "ds", "fs", "gs")
_SEG_REGS = {"es": X.UC_X86_REG_ES, "cs": X.UC_X86_REG_CS, "ss": X.UC_X86_REG_SS,
             "ds": X.UC_X86_REG_DS, "fs": X.UC_X86_REG_FS, "gs": X.UC_X86_REG_GS}

# uc_ctl() codes, encoded as the binding does: (op << 30) | (nargs << 26) | ctl
_CTL_TLB_FLUSH = (UC_CTL_IO_WRITE << 30) | UC_CTL_TLB_FLUSH
_CTL_TLB_FLUSH_PAGE = (UC_CTL_IO_WRITE << 30) | (1 << 26) | UC_CTL_TLB_FLUSH   # patch 3



class UnicornMismatch(Exception):
    """This unicorn is not the one whose insides we know: refuse to run."""


def _fail(why):
    raise UnicornMismatch(
        "unicorn %s is not supported (pylguest needs unicorn==%s): %s"
        % (getattr(unicorn, "__version__", "?"), REQUIRED_VERSION, why))


def _safe_read(fd, addr, n):
    """Read our own memory through /proc/self/mem: a bad pointer gives b'', not SIGSEGV."""
    try:
        return os.pread(fd, n, addr)
    except OSError:
        return b""


def _locate_env(uc):
    """Find env: plant a signature in EAX..EBX and look behind every pointer in uc_struct."""
    regs = (X.UC_X86_REG_EAX, X.UC_X86_REG_ECX, X.UC_X86_REG_EDX, X.UC_X86_REG_EBX)
    sig_vals = (0x13579BDF, 0x2468ACE0, 0x0F1E2D3C, 0x4B5A6978)
    saved = [uc.reg_read(r) for r in regs]
    for r, v in zip(regs, sig_vals):
        uc.reg_write(r, v)
    sig = struct.pack("<4Q", *sig_vals)
    uch = ctypes.cast(uc._uch, ctypes.c_void_p).value
    fd = os.open("/proc/self/mem", os.O_RDONLY)
    found = None
    try:
        us = _safe_read(fd, uch, 0x4000)
        seen = set()
        for i in range(0, len(us) - 7, 8):
            p = struct.unpack_from("<Q", us, i)[0]
            if p < 0x10000 or p > 0x7FFFFFFFFFFF or p in seen:
                continue
            seen.add(p)
            blk = _safe_read(fd, p, 0x20000)
            j = blk.find(sig)
            while j >= 0:
                # A stale copy (another engine's, a freed buffer) would match too:
                # only the live one follows a register write.
                if j % 8 == 0:
                    uc.reg_write(X.UC_X86_REG_EAX, 0x5A5A1234)
                    live = _safe_read(fd, p + j, 8) == struct.pack("<Q", 0x5A5A1234)
                    uc.reg_write(X.UC_X86_REG_EAX, sig_vals[0])
                    if live:
                        found = p + j
                        break
                j = blk.find(sig, j + 1)
            if found is not None:
                break
    finally:
        os.close(fd)
        for r, v in zip(regs, saved):
            uc.reg_write(r, v)
    if found is None:
        _fail("cannot find the CPU state (env) inside the engine")
    return found


def _env_fields(fields, span):
    """ctypes _fields_ placing each (name, offset, type) at its offset in env."""
    out, at = [], 0
    for name, off, ctype in sorted(fields, key=lambda f: f[1]):
        if off > at:
            out.append(("_gap%d" % at, ctypes.c_char * (off - at)))
        out.append((name, ctype))
        at = off + ctypes.sizeof(ctype)
    out.append(("_gap%d" % at, ctypes.c_char * (span - at)))
    return out


_U32, _S32, _U64 = ctypes.c_uint32, ctypes.c_int32, ctypes.c_uint64


# --- our patches to the engine (patches/unicorn/) ------------------------------------
TLB_NOTDIRTY = 1 << 10          # QEMU's TLB_NOTDIRTY (4 KiB target pages): store slow path
TLB_ENTRY_SIZE = 64             # CPUTLBEntry {addr_read, addr_write, addr_code, paddr,
                                # addend}, padded to a power of two
_patches_checked = False


def _tlb_addr_write(env, vaddr):
    """addr_write of every TLB entry the engine holds for vaddr's page, in each MMU mode.

    QEMU keeps the fast TLB's {mask, table} pairs (CPUTLBDescFast, one per MMU mode) just
    below env, where translated code finds them.  We look there for pairs whose table
    really has an entry for vaddr (addr_read == the page), so a wrong guess finds nothing.
    """
    page = vaddr & ~0xFFF
    found = []
    fd = os.open("/proc/self/mem", os.O_RDONLY)
    try:
        below = _safe_read(fd, env - 256, 256)
        for off in range(0, len(below) - 15, 8):
            mask, table = struct.unpack_from("<QQ", below, off)
            n = (mask // TLB_ENTRY_SIZE) + 1
            if (mask % TLB_ENTRY_SIZE or n & (n - 1) or not 64 <= n <= 1 << 20
                    or not 0x10000 <= table <= 0x7FFFFFFFFFFF):
                continue
            ent = _safe_read(fd, table + ((page >> 12) & (n - 1)) * TLB_ENTRY_SIZE, 16)
            if len(ent) == 16:
                addr_read, addr_write = struct.unpack("<QQ", ent)
                if addr_read == page:
                    found.append(addr_write)
    finally:
        os.close(fd)
    return found


def check_engine_patches():
    """Refuse an engine built without pylguest's patches (patches/unicorn/), once per
    process, by watching a scratch engine do what only the patched one does:

      patch 1: a store to a page that holds no translated code leaves its TLB entry
               without TLB_NOTDIRTY, so the next stores take the inline fast path;
      patch 2: a stop asked in the middle of a block (here by an "out" hook) lands at
               the next block boundary, not after the block's next memory access.

    The program: mov [0x2000],eax; out 0x80,al (the hook stops); mov [0x2004],eax;
    mov [0x2008],eax; jmp $.  Stock 2.1.4 stops right after the store to 0x2004, so
    0x2008 stays zero, and it leaves the 0x2000 entry "not dirty".
    """
    global _patches_checked
    if _patches_checked:
        return
    _patches_checked = True
    uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_32)
    env = ctypes.addressof(UcInternals(uc))
    uc.mem_map(0, 0x4000)
    uc.mem_write(0x1000, bytes.fromhex("a300200000" "e680" "a304200000" "a308200000" "ebfe"))
    uc.hook_add(unicorn.UC_HOOK_INSN, lambda uc, port, size, value, ud: uc.emu_stop(),
                None, 1, 0, X.UC_X86_INS_OUT)
    uc.reg_write(X.UC_X86_REG_EAX, 0x5EED)
    uc.emu_start(0x1000, 0x3000, timeout=1_000_000)
    why = None
    if struct.unpack("<I", uc.mem_read(0x2008, 4))[0] != 0x5EED:
        why = "a stop lands in the middle of a block"
    else:
        writes = _tlb_addr_write(env, 0x2000)
        if not writes:
            _fail("cannot find the TLB next to the CPU state")
        if any(w & TLB_NOTDIRTY for w in writes):
            why = "guest stores take the slow path"
    if why is not None:
        raise UnicornMismatch(
            "unicorn %s lacks pylguest's patches (%s): build it with make "
            "(patches/unicorn/)" % (getattr(unicorn, "__version__", "?"), why))


class UcInternals(ctypes.Structure):
    """One engine's CPUX86State, laid over env itself: the Guest's registers by name.

      ui.eax ... ui.edi, ui.eip     u32 fields of env (the low half of each u64 word):
                                    read and written in place, no API call, ~25 ns
      ui.cs, ui.ss, ui.ds ...       the selectors.  Read only: a load needs QEMU's
                                    descriptor checks, ui.load_seg("ss", selector)
      ui.eflags                     through the register API (the condition codes are
                                    computed lazily, not kept in env)
      ui.cr0, ui.cr3, ui.cr4        read in env, written through the register API, which
                                    does what a mov to %cr does (TLB flush, hflags)
      ui.cr2                        the faulting address of the last #PF
      ui.cpl                        the privilege level (QEMU keeps it in hflags)
      ui.hcall_args()               (eax, ebx, ecx, edx, esi): struct hcall_args

    This is the only code that knows where anything is in env.  The constructor finds
    env, lays this structure over it and checks every field through the public API;
    it raises UnicornMismatch if anything disagrees.
    """

    _pack_ = 1
    _fields_ = _env_fields(
        [(name, 8 * i, _U32) for i, name in enumerate(
            ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi"))]
        + [("eip", OFF_EIP, _U32), ("_hflags", OFF_HFLAGS, _U32)]
        + [(name, OFF_SEGS + SEG_SIZE * i, _U32) for i, name in enumerate(SEGMENT_NAMES)]
        + [("_cr%d" % n, OFF_CR + 8 * n, _U64) for n in (0, 2, 3, 4)]
        + [("_error_code", OFF_ERROR_CODE, _S32), ("_exception_is_int", OFF_IS_INT, _S32),
           ("_old_exception", OFF_OLD_EXCEPTION, _S32)],
        ENV_SPAN)

    def __new__(cls, uc):
        if getattr(unicorn, "__version__", None) != REQUIRED_VERSION:
            _fail("wrong version")
        return cls.from_address(_locate_env(uc))

    def __init__(self, uc):
        self.uc = uc                  # the engine owns env: keep it alive with us
        self._uch = uc._uch
        # Fast paths to the C register API for what env can't give us safely
        # (eflags needs the lazily computed condition codes; segment loads need the
        # descriptor checks and hidden-part updates QEMU does).
        self._val = ctypes.c_uint64()
        self._pval = ctypes.byref(self._val)
        self._rd = uclib.uc_reg_read
        self._wr = uclib.uc_reg_write
        self._verify()
        check_engine_patches()

    # --- registers -------------------------------------------------------------------
    def hcall_args(self):
        """(eax, ebx, ecx, edx, esi): the hypercall number and its four arguments, as
        struct hcall_args lies over the saved registers."""
        return (self.eax, self.ebx, self.ecx, self.edx, self.esi)

    @property
    def eflags(self):
        self._rd(self._uch, X.UC_X86_REG_EFLAGS, self._pval)
        return self._val.value

    @eflags.setter
    def eflags(self, value):
        self.reg_write(X.UC_X86_REG_EFLAGS, value)

    @property
    def cr0(self):
        return self._cr0

    @cr0.setter
    def cr0(self, value):
        self.reg_write(X.UC_X86_REG_CR0, value)

    @property
    def cr2(self):
        return self._cr2 & 0xFFFFFFFF

    @property
    def cr3(self):
        return self._cr3

    @cr3.setter
    def cr3(self, value):
        self.reg_write(X.UC_X86_REG_CR3, value)

    @property
    def cr4(self):
        return self._cr4

    @cr4.setter
    def cr4(self, value):
        self.reg_write(X.UC_X86_REG_CR4, value)

    def load_seg(self, seg, selector):
        """Load segment register seg ("cs", "ss", "ds"...) from the GDT with QEMU's
        checks (an %ss needs RPL == DPL == CPL); returns uc_err, 0 = ok."""
        self._val.value = selector
        return self._wr(self._uch, _SEG_REGS[seg], self._pval)

    def flush_tlb(self):
        """Throw away every cached translation: uc_ctl(UC_CTL_TLB_FLUSH) (1.4 us)."""
        uclib.uc_ctl(self._uch, _CTL_TLB_FLUSH)

    def flush_tlb_page(self, vaddr):
        """Drop the TLB entries for the virtual page holding vaddr (every MMU mode), as
        invlpg does.  UC_CTL_TLB_FLUSH with one argument is our patch 3; an engine
        without it ignores the argument and flushes everything: correct, only slower."""
        uclib.uc_ctl(self._uch, _CTL_TLB_FLUSH_PAGE, ctypes.c_uint64(vaddr))

    def reg_read(self, reg):
        """uc_reg_read without the binding's overhead (integer registers only)."""
        self._rd(self._uch, reg, self._pval)
        return self._val.value

    def reg_write(self, reg, value):
        """uc_reg_write without the binding's overhead; returns the uc_err (0 = ok)."""
        self._val.value = value
        return self._wr(self._uch, reg, self._pval)

    # --- hidden CPU state ------------------------------------------------------------
    @property
    def cpl(self):
        """The current privilege level, 0..3."""
        return self._hflags & HF_CPL_MASK

    @cpl.setter
    def cpl(self, cpl):
        self._hflags = (self._hflags & ~HF_CPL_MASK) | cpl

    def error_code(self):
        """The error code of the exception being raised (#PF, #GP...)."""
        return self._error_code & 0xFFFFFFFF

    def exception_is_int(self):
        """True while handling a software "int n" (as opposed to a fault)."""
        return self._exception_is_int != 0

    def clear_exception_state(self):
        """Forget the exception in flight, so the next fault is not a double fault."""
        self._old_exception = -1

    def triple_faulted(self):
        """True if the engine stopped on a triple fault.

        QEMU's check_exception() counts nested faults in old_exception.  A fault while
        old_exception is #DF (8) is a triple fault: it asks for a system reset, which
        unicorn turns into a quiet stop, and emu_start() returns with no error and
        old_exception still 8.  The Host clears old_exception at every fault its hooks
        see, so 8 survives only if three faults came without one of ours between."""
        return self._old_exception == EXCP08_DBLE

    # --- start-up self-check -----------------------------------------------------------
    def _verify(self):
        """Plant values through the public API and read them back through env (and back)."""
        uc = self.uc
        names = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")
        gprs = (X.UC_X86_REG_EAX, X.UC_X86_REG_ECX, X.UC_X86_REG_EDX, X.UC_X86_REG_EBX,
                X.UC_X86_REG_ESP, X.UC_X86_REG_EBP, X.UC_X86_REG_ESI, X.UC_X86_REG_EDI)
        saved = [uc.reg_read(r) for r in gprs]
        saved_eip = uc.reg_read(X.UC_X86_REG_EIP)
        saved_cr2 = uc.reg_read(X.UC_X86_REG_CR2)
        try:
            for i, r in enumerate(gprs):
                uc.reg_write(r, 0x31415900 + i)
            if [getattr(self, n) for n in names] != [0x31415900 + i for i in range(8)]:
                _fail("general registers are not where expected")
            for i, n in enumerate(names):
                setattr(self, n, 0x27182800 + i)
            if [uc.reg_read(r) for r in gprs] != [0x27182800 + i for i in range(8)]:
                _fail("writing general registers through env does not stick")
            uc.reg_write(X.UC_X86_REG_EIP, 0x1234567)
            if self.eip != 0x1234567:
                _fail("eip is not where expected")
            uc.reg_write(X.UC_X86_REG_CR2, 0x7654321)
            if self.cr2 != 0x7654321:
                _fail("cr2 is not where expected")
            # A fresh engine runs at CPL 0 with null-ish selectors in real-mode style.
            if self.reg_read(X.UC_X86_REG_CS) != self.cs:
                _fail("segment cache is not where expected")
            if self.cpl != 0:
                _fail("hflags is not where expected")
            # old_exception is -1 on a fresh CPU; error_code and is_int are 0.
            if self._old_exception != -1 or self._exception_is_int != 0:
                _fail("exception state is not where expected")
        finally:
            for r, v in zip(gprs, saved):
                uc.reg_write(r, v)
            uc.reg_write(X.UC_X86_REG_EIP, saved_eip)
            uc.reg_write(X.UC_X86_REG_CR2, saved_cr2)

    def verify_live(self):
        """Second check once the engine is in protected mode: selectors and CPL agree."""
        for seg in ("cs", "ss", "ds", "es"):
            if getattr(self, seg) != self.reg_read(_SEG_REGS[seg]):
                _fail("segment selectors disagree with the register API")
        if self.cpl != (self.ss & 3):
            _fail("CPL in hflags disagrees with %ss")
        for n, reg in ((0, X.UC_X86_REG_CR0), (3, X.UC_X86_REG_CR3), (4, X.UC_X86_REG_CR4)):
            if getattr(self, "cr%d" % n) != self.reg_read(reg):
                _fail("%%cr%d is not where expected" % n)

    def hook_intr_raw(self, fn):
        """Register fn(intno) as a UC_HOOK_INTR callback straight through the C API.

        The binding wraps every callback in two Python layers (about 0.3 us per call,
        a quarter of a hypercall).  fn must not raise: nothing catches it here.
        """
        from unicorn.unicorn_py3.arch.types import uc_hook_h
        from unicorn.unicorn_py3.unicorn import HOOK_INTR_CFUNC
        from unicorn.unicorn_const import UC_HOOK_INTR

        def entry(_uch, intno, _ud):
            fn(intno)
        cfn = HOOK_INTR_CFUNC(entry)
        handle = uc_hook_h()
        err = uclib.uc_hook_add(self._uch, ctypes.byref(handle), UC_HOOK_INTR,
                                ctypes.cast(cfn, ctypes.c_void_p), None,
                                ctypes.c_uint64(1), ctypes.c_uint64(0))
        if err:
            _fail("uc_hook_add failed (%d)" % err)
        self._raw_hooks = getattr(self, "_raw_hooks", []) + [cfn]   # keep it alive
        return handle.value


class StopRequest:
    """A stop another thread can ask for; the engine takes it at the next translation-
    block boundary.

    Stock unicorn 2.1.4 let a uc_emu_stop() from another thread land after the next load
    or store, in the middle of a block, and then ran the block's instruction again (a
    Guest's "incw idx" went up by 2), so the Host stopped through a native UC_HOOK_BLOCK,
    which cost every block the Guest ran ~2.4 ns.  With our patch 2 the call itself lands
    at the next block boundary (check_engine_patches() makes sure), so a thread simply
    makes it.  Two things are left for us to mind:

      * a uc_emu_stop() made while the engine is not inside emu_start() is lost
        (emu_start() clears it), so an event raised just before the run loop enters
        could wait for the Guest's next exit: the helper thread calls set() again while
        raised events wait (Channel._run);
      * a call still under way when the run loop lowers the request can land in the run
        after: is_set() counts it, so that stop is a harmless re-entry, not a mystery.

      set()      any thread: raise the request, then uc_emu_stop()
      clear()    the run loop, before its last look at its events
      is_set()   the run loop, after emu_start(): may a request have stopped this run?
    """

    def __init__(self, uc):
        self._uch = uc._uch
        self._emu_stop = uclib.uc_emu_stop
        self._lock = threading.Lock()
        self.pending = False
        self._begun = self._ended = 0        # uc_emu_stop() calls, by any thread
        self._begun_at_clear = 0
        self._busy_at_clear = False

    def set(self):
        self.pending = True
        with self._lock:
            self._begun += 1
        self._emu_stop(self._uch)
        with self._lock:
            self._ended += 1

    def clear(self):
        self.pending = False
        with self._lock:
            self._begun_at_clear = self._begun
            self._busy_at_clear = self._begun != self._ended

    def is_set(self):
        return self.pending or self._busy_at_clear or self._begun != self._begun_at_clear
