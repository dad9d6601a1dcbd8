"""The Host's plumbing: the unicorn self-check, the /dev/lguest protocol's errors, the
lazy helper thread, and drop_translations() for code written behind unicorn's back."""
import mmap
import struct
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "guests"))
from harness import TinyGuest  # noqa: E402

from host import LguestDev  # noqa: E402
from host.abi import LHREQ_BREAK, LHREQ_INITIALIZE, LHREQ_IRQ  # noqa: E402
from host import ucinternals  # noqa: E402


def test_unicorn_self_check_passes_and_reads_live_state():
    from unicorn import UC_ARCH_X86, UC_MODE_32, Uc
    from unicorn import x86_const as X
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    ui = ucinternals.UcInternals(uc)
    uc.reg_write(X.UC_X86_REG_EBX, 0xABCDEF01)
    assert ui.ebx == 0xABCDEF01
    ui.esi = 0x1234
    assert uc.reg_read(X.UC_X86_REG_ESI) == 0x1234
    ui.eip = 0x1_0000_2000                              # a 32-bit register keeps 32 bits
    assert uc.reg_read(X.UC_X86_REG_EIP) == 0x2000 == ui.eip
    uc.reg_write(X.UC_X86_REG_EAX, 1)
    uc.reg_write(X.UC_X86_REG_EDX, 4)
    assert ui.hcall_args() == (1, 0xABCDEF01, uc.reg_read(X.UC_X86_REG_ECX), 4, 0x1234)
    ui.cpl = 3
    assert ui.cpl == 3


def test_unicorn_version_mismatch_is_refused(monkeypatch):
    import unicorn
    from unicorn import UC_ARCH_X86, UC_MODE_32, Uc
    monkeypatch.setattr(unicorn, "__version__", "2.0.1")
    with pytest.raises(ucinternals.UnicornMismatch) as e:
        ucinternals.UcInternals(Uc(UC_ARCH_X86, UC_MODE_32))
    assert "needs unicorn==2.1.4" in str(e.value)


def test_bad_layout_is_refused(monkeypatch):
    """A CPU state whose fields are not where we expect them (here: all 8 bytes off)."""
    from unicorn import UC_ARCH_X86, UC_MODE_32, Uc
    locate = ucinternals._locate_env
    monkeypatch.setattr(ucinternals, "_locate_env", lambda uc: locate(uc) + 8)
    with pytest.raises(ucinternals.UnicornMismatch) as e:
        ucinternals.UcInternals(Uc(UC_ARCH_X86, UC_MODE_32))
    assert "general registers are not where expected" in str(e.value)


def test_protocol_errors():
    lg = LguestDev()
    with pytest.raises(ValueError):
        lg.read()
    with pytest.raises(ValueError):
        lg.write((LHREQ_IRQ, 1))
    with pytest.raises(ValueError):
        lg.breaker()
    with pytest.raises(ValueError):
        lg.write((LHREQ_INITIALIZE, 0, 16, 0))          # no memory
    m = mmap.mmap(-1, 1 << 20, mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
    import ctypes
    anchor = ctypes.c_char.from_buffer(m)
    base = ctypes.addressof(anchor)
    before = threading.active_count()
    lg.write((LHREQ_INITIALIZE, base, 256, 0x1000))
    assert threading.active_count() == before          # no thread until the first read()
    with pytest.raises(ValueError):
        lg.write((LHREQ_INITIALIZE, base, 256, 0x1000))  # EBUSY
    with pytest.raises(ValueError):
        lg.write((LHREQ_IRQ, 32))
    with pytest.raises(ValueError):
        lg.write((99, 0))
    lg.write((LHREQ_BREAK, 0))                          # nothing to release: fine
    lg.close()
    del anchor


def test_guest_jumping_into_nowhere_dies_cleanly():
    # Zeroed memory is "add %al,(%eax)" forever: start at the last page, run off the end.
    g = TinyGuest("smc", 0, start=(16 << 20) - 16)
    try:
        notes, died = g.run()
        assert died.reason.startswith(("unhandled trap 14 at ", "bad read address"))
    finally:
        g.close()


def _function(val):
    return b"\xb8" + struct.pack("<I", val) + b"\xc3"     # mov $val, %eax; ret


def _paged_tables(g):
    pd, pt = 0x200000, 0x201000
    for i in range(1024):
        g.poke(pt + 4 * i, (i << 12) | 0x7)
    g.poke(pd, pt | 0x67)
    g.poke(pd + 4 * 768, pt | 0x67)                      # 0xC0000000 -> 0


@pytest.mark.parametrize("mode", [0, 1])
def test_drop_translations(mode):
    g = TinyGuest("smc", mode)
    try:
        if mode == 1:
            _paged_tables(g)
        g.mem[0x300000:0x300006] = _function(0x111)
        assert g.read() == 0x111
        # Another process (the block worker) writes new code: unicorn can't tell.
        g.mem[0x300000:0x300006] = _function(0x222)
        assert g.read() == 0x111                          # stale translation, as expected
        g.lg.drop_translations(0x300000, 6)
        assert g.read() == 0x222
        # A range that is mapped nowhere the Host can find is still safe.
        g.mem[0x300000:0x300006] = _function(0x333)
        g.lg.drop_translations(0xE00000, 0x10000)
        g.lg.drop_translations(0x300000, 0)
        g.lg.drop_translations(0x2FF000, 0x2000)          # spans the function's page
        assert g.read() == 0x333
    finally:
        g.close()


def test_no_traceback_from_hook_errors(monkeypatch):
    """A bug in a hook must still end as one clean line, never a traceback."""
    import host.hypercalls as hc
    g = TinyGuest("smc", 0)
    try:
        monkeypatch.setattr(hc, "do_hcall", lambda cpu, args: 1 / 0)
        g.mem[0x300000:0x300006] = _function(0x111)
        notes, died = g.run()
        assert died.reason.startswith("Host error: ZeroDivisionError")
    finally:
        g.close()


def _faulting_engine(hook):
    """A scratch engine dividing by zero, each #DE going to hook(ui, uc, intno)."""
    from unicorn import UC_ARCH_X86, UC_HOOK_INTR, UC_MODE_32, Uc
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    ui = ucinternals.UcInternals(uc)
    uc.mem_map(0x1000, 0x1000)
    uc.mem_write(0x1000, b"\x31\xc9\xf7\xf1")            # xor %ecx,%ecx; div %ecx
    uc.hook_add(UC_HOOK_INTR, lambda uc, intno, ud: hook(ui, uc, intno))
    uc.emu_start(0x1000, 0x2000)
    return ui


def test_triple_fault_is_read_from_unicorns_own_state():
    """Three faults with nobody clearing the one in flight: QEMU's check_exception()
    makes the second a #DF and the third a triple fault, and emu_start() just returns.
    triple_faulted() tells that stop from any other."""
    seen = []
    ui = _faulting_engine(lambda ui, uc, intno: seen.append(intno))
    assert seen == [0, 8] and ui.triple_faulted()

    # The same faults, each cleared as the Host's hooks do, and a stop on the third.
    seen.clear()

    def clearing(ui, uc, intno):
        ui.clear_exception_state()
        seen.append(intno)
        if len(seen) == 3:
            uc.emu_stop()
    ui = _faulting_engine(clearing)
    assert seen == [0, 0, 0] and not ui.triple_faulted()


def test_triple_fault_kills_the_guest_by_name(monkeypatch):
    """A Host whose hooks left faults in flight would see the Guest triple-fault: the
    run loop names it from unicorn's state."""
    from host import x86_core
    monkeypatch.setattr(x86_core, "handle_trap", lambda cpu, trapnum, errcode: None)
    monkeypatch.setattr(ucinternals.UcInternals, "clear_exception_state", lambda self: None)
    g = TinyGuest("smc", 0, start=0x7F0000)
    try:
        g.mem[0x7F0000] = 0xF4                           # hlt: #GP(0) at ring 1
        notes, died = g.run()
        assert died.reason == "unhandled trap 8 at 0x7f0000 (0): triple fault"
    finally:
        g.close()
