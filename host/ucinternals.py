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
        """Throw away every cached translation: uc_ctl(UC_CTL_TLB_FLUSH) (1.4 us; unicorn
        has no per-page flush)."""
        uclib.uc_ctl(self._uch, _CTL_TLB_FLUSH)

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
    """A stop another thread can ask for, taken only at a translation-block boundary.

    uc_emu_stop() called from another thread is not precise in unicorn 2.1.4: the stop
    lands after the next memory store inside the running translation block, and the
    engine then resumes at the *start* of that block, so every instruction from there to
    the store runs twice (a Guest's "incw idx" went up by 2).  So the Host's helper
    thread never calls emu_stop() itself: it raises this flag, and a UC_HOOK_BLOCK
    callback, which runs before any instruction of a block, stops the engine there.

    The callback is called for every block the Guest runs, so it must not be Python
    (a Python block hook costs ~25x in block throughput).  It is ten bytes of x86-64
    machine code, the equivalent of:

        struct stop_request { volatile int32_t pending; int32_t pad;
                              uc_err (*emu_stop)(uc_engine *); };
        void stop_hook(uc_engine *uc, uint64_t addr, uint32_t size, void *user_data)
        {
                struct stop_request *s = user_data;
                if (s->pending)
                        s->emu_stop(uc);        // a tail call: uc is still in %rdi
        }

    set() raises the flag (any thread); clear() lowers it (the run loop, before it looks
    at its events and re-enters emu_start, so a flag raised after that look still stops
    the engine at the first block).
    """

    # mov eax,[rcx]; test eax,eax; jnz +1; ret; jmp qword [rcx+8]
    CODE = bytes.fromhex("8b01" "85c0" "7501" "c3" "ff6108")

    class _Flag(ctypes.Structure):
        _fields_ = [("pending", ctypes.c_int32), ("pad", ctypes.c_int32),
                    ("emu_stop", ctypes.c_void_p)]

    _code_page = None
    _tested = False

    @classmethod
    def _callback(cls):
        """The machine code above, in a page of its own made read+execute."""
        if cls._code_page is None:
            import mmap
            import platform
            if platform.machine() != "x86_64":
                _fail("the stop hook is x86-64 machine code; this host is %s"
                      % platform.machine())
            page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
            page.write(cls.CODE)
            addr = ctypes.addressof(ctypes.c_char.from_buffer(page))
            libc = ctypes.CDLL(None, use_errno=True)
            libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
            if libc.mprotect(addr, mmap.PAGESIZE, mmap.PROT_READ | mmap.PROT_EXEC):
                _fail("cannot make the stop hook executable (errno %d)" % ctypes.get_errno())
            cls._code_page = (page, addr)
        return cls._code_page[1]

    def __init__(self, uc):
        if not StopRequest._tested:
            StopRequest._tested = True
            self.self_test()
        self.flag = self._Flag(0, 0, ctypes.cast(uclib.uc_emu_stop, ctypes.c_void_p).value)
        handle = ctypes.c_size_t()
        err = uclib.uc_hook_add(uc._uch, ctypes.byref(handle), unicorn.UC_HOOK_BLOCK,
                                ctypes.c_void_p(self._callback()), ctypes.byref(self.flag),
                                ctypes.c_uint64(1), ctypes.c_uint64(0))
        if err:
            _fail("uc_hook_add(UC_HOOK_BLOCK) failed (%d)" % err)
        self.handle = handle.value

    def set(self):
        self.flag.pending = 1

    def clear(self):
        self.flag.pending = 0

    def is_set(self):
        return self.flag.pending != 0

    @classmethod
    def self_test(cls):
        """Check on a scratch engine that a raised flag stops a Guest spinning in
        "jmp ." at once; refuse to run if it does not."""
        uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_32)
        uc.mem_map(0x1000, 0x1000)
        uc.mem_write(0x1000, b"\x40\xeb\xfd")     # inc eax; jmp back to it
        stop = cls(uc)
        stop.set()
        uc.emu_start(0x1000, 1 << 40, timeout=2_000_000)
        ran = uc.reg_read(X.UC_X86_REG_EAX)
        stop.clear()
        uc.emu_start(0x1000, 1 << 40, timeout=2_000)    # ends by the timeout (2 ms)
        if ran != 0 or uc.reg_read(X.UC_X86_REG_EAX) == 0:
            _fail("the block-boundary stop hook does not work (ran %d)" % ran)
