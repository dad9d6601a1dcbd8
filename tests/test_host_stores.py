"""Guest stores on the engine's fast path (our unicorn patches, patches/unicorn/):
self-modifying code through the same and a second virtual alias, read-only memory still
refusing stores, and the start-up check that refuses an engine without the patches.

Code written by the Host or the block worker (drop_translations) is in
test_host_internals.py."""
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "guests"))
from harness import GuestDied, TinyGuest  # noqa: E402

from conftest import assert_no_traceback  # noqa: E402

FUNC = 0x300000


def _paged_tables(g, extra=()):
    """A directory at 0x200000 mapping 0-4 MiB at 0 and at 0xC0000000; extra:
    (virtual page, PTE) pairs in the low 4 MiB."""
    pd, pt = 0x200000, 0x201000
    for i in range(1024):
        g.poke(pt + 4 * i, (i << 12) | 0x7)
    for vaddr, pte in extra:
        g.poke(pt + 4 * (vaddr >> 12), pte)
    g.poke(pd, pt | 0x67)
    g.poke(pd + 4 * 768, pt | 0x67)


@pytest.mark.parametrize("mode", [2, 3], ids=["same-alias", "second-alias"])
def test_guest_rewrites_code_it_ran(mode):
    """Each round the Guest stores a new immediate into a function it has run, then runs
    it again: every store must reach the translated code.  Through a second alias the
    store goes through a TLB entry made fast while the page held no code, which must be
    slow again once the page is translated again."""
    g = TinyGuest("smc", mode)
    try:
        if mode == 3:
            _paged_tables(g)
        g.mem[FUNC:FUNC + 6] = b"\xb8\0\0\0\0\xc3"          # mov $0, %eax; ret
        assert [g.read() for _ in range(40)] == list(range(1, 41))
    finally:
        g.close()


def test_read_only_memory_refuses_stores():
    """A Guest page table may point into the Host's pages (the GDT), which the engine
    maps read-only: reads work, a store kills the Guest and changes nothing, however
    many stores elsewhere went the fast way first."""
    from host.cpu import GDT_PHYS
    g = TinyGuest("smc", 4)
    try:
        _paged_tables(g, [(0x3FF000, GDT_PHYS | 0x67)])     # present, writable, dirty
        gdt = g.lg.guest.gdt
        before = list(gdt)
        assert g.read() == gdt[0x60 // 4]
        with pytest.raises(GuestDied) as e:
            g.read()
        assert e.value.reason == "bad page table entry"
        assert list(gdt) == before
        assert struct.unpack_from("<I", g.mem, 0x380000 + 4)[0] == 1
    finally:
        g.close()


def test_cross_thread_stop_lands_at_a_block_boundary():
    """uc_emu_stop() from another thread stops the engine between blocks (patch 2).
    Stock 2.1.4 stopped after the next load or store, mid-block, and restarted the
    block's instruction: "incw" after its store ran twice (most of 2000 stops)."""
    import threading
    from unicorn import UC_ARCH_X86, UC_MODE_32, Uc
    from unicorn import x86_const as X
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(0, 0x4000)
    uc.mem_write(0x1000, bytes.fromhex("66ff0500200000" "41" "ebf6"))  # incw; inc ecx; jmp
    done = threading.Event()

    def stopper():
        while not done.is_set():
            uc.emu_stop()
            done.wait(0.00005)
    t = threading.Thread(target=stopper)
    t.start()
    try:
        eip, bad = 0x1000, 0
        for _ in range(2000):
            uc.emu_start(eip, 0x3000)
            eip = uc.reg_read(X.UC_X86_REG_EIP)
            word = struct.unpack("<H", uc.mem_read(0x2000, 2))[0]
            bad += word != uc.reg_read(X.UC_X86_REG_ECX) & 0xFFFF
    finally:
        done.set()
        t.join()
    assert bad == 0 and eip == 0x1000


@pytest.fixture(scope="module")
def stock_unicorn(tmp_path_factory):
    """libunicorn.so.2 from PyPI's own 2.1.4 wheel (no patches), or a skip."""
    d = tmp_path_factory.mktemp("stock-unicorn")
    r = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--only-binary",
                        ":all:", "--no-deps", "unicorn==2.1.4", "-d", str(d)],
                       capture_output=True, text=True, timeout=300)
    wheels = sorted(d.glob("unicorn-2.1.4-*.whl"))
    if r.returncode or not wheels:
        pytest.skip("PyPI's unicorn 2.1.4 wheel cannot be downloaded here")
    with zipfile.ZipFile(wheels[0]) as z:
        z.extract("unicorn/lib/libunicorn.so.2", d)
    return d / "unicorn" / "lib"


def test_stock_engine_is_refused(run_launcher, stock_unicorn):
    import os
    env = dict(os.environ, LIBUNICORN_PATH=str(stock_unicorn))
    proc = run_launcher([64, "guest/guest.elf"], env=env)
    assert proc.returncode == 1
    assert proc.stderr.startswith("lguest: unicorn 2.1.4 lacks pylguest's patches (")
    assert proc.stderr.count("\n") == 1 and proc.stdout == ""
    assert_no_traceback(proc)
