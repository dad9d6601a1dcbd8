"""The Guest kernel builds, and guest.elf (and guest-pae.elf, its PAE build) has the
shape a Launcher expects.

Our Guest is laid out like Linux's i386 vmlinux (guest/guest.ld): ET_EXEC for
EM_386, every PT_LOAD linked at PAGE_OFFSET + its physical address, the first
at physical 0x1000000 (virtual 0xC1000000), and an entry point that is the
*physical* address of startup_32, which the Host jumps to with paging on
through its identity map.
"""
import os
import shutil
import subprocess
import tempfile

import pytest
from elftools.elf.elffile import ELFFile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUEST = os.path.join(ROOT, "guest")
PAGE_OFFSET = 0xC0000000


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Build the Guest from a scratch copy of guest/, so the test neither
    races other builds nor leaves objects behind."""
    work = tmp_path_factory.mktemp("guest")
    dst = os.path.join(work, "guest")
    shutil.copytree(GUEST, dst, ignore=shutil.ignore_patterns("*.o", "*.elf"))
    r = subprocess.run(["make", "-C", dst], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    return dst


@pytest.fixture(scope="module", params=["guest.elf", "guest-pae.elf"])
def elf(built, request):
    f = open(os.path.join(built, request.param), "rb")
    yield ELFFile(f)
    f.close()


def symbols(elf):
    return {s.name: s["st_value"] for s in elf.get_section_by_name(".symtab").iter_symbols()}


def test_builds_without_warnings(built):
    """A clean rebuild prints no compiler warnings."""
    r = subprocess.run(["make", "-C", built, "clean", "all"], capture_output=True, text=True)
    assert r.returncode == 0
    assert "warning:" not in r.stderr, r.stderr


def test_header(elf):
    assert elf.header["e_type"] == "ET_EXEC"
    assert elf.header["e_machine"] == "EM_386"
    assert elf.elfclass == 32 and elf.little_endian


def test_segments_linked_high_loaded_low(elf):
    loads = [s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
    assert loads, "no PT_LOAD"
    assert min(s["p_paddr"] for s in loads) == 0x1000000
    for s in loads:
        assert s["p_vaddr"] == s["p_paddr"] + PAGE_OFFSET
        assert s["p_filesz"] <= s["p_memsz"]
    first = min(loads, key=lambda s: s["p_paddr"])
    assert first["p_vaddr"] == 0xC1000000


def test_entry_is_physical_startup_32(elf):
    syms = symbols(elf)
    assert elf.header["e_entry"] == syms["startup_32"] - PAGE_OFFSET == 0x1000000


def test_lguest_data_layout(elf):
    """lguest_data's initial contents are what the Host reads at LGUEST_INIT:
    the async ring all free, noirq window, kernel_address, syscall_vec."""
    import struct
    syms = symbols(elf)
    addr = syms["lguest_data"]
    data = None
    for s in elf.iter_segments():
        if s["p_type"] == "PT_LOAD" and s["p_vaddr"] <= addr < s["p_vaddr"] + s["p_filesz"]:
            data = s.data()[addr - s["p_vaddr"]: addr - s["p_vaddr"] + 1392]
    assert data is not None and len(data) == 1392
    assert data[24:88] == b"\xff" * 64                 # hcall_status
    noirq_start, noirq_end, kaddr, vec = struct.unpack_from("<4I", data, 1376)
    assert noirq_start == syms["lguest_noirq_start"]
    assert noirq_end == syms["lguest_noirq_end"]
    assert noirq_start < syms["lguest_iret"] + 16 and noirq_end > noirq_start
    assert kaddr == PAGE_OFFSET and vec == 0x80
    assert struct.unpack_from("<I", data, 0)[0] == 0  # irq_enabled: off at boot
    assert struct.unpack_from("<I", data, 4)[0] == 1  # timer blocked until set up


def test_no_undefined_or_libgcc_calls(elf):
    """Freestanding: nothing left undefined (there is no libgcc to link)."""
    undefined = [s.name for s in elf.get_section_by_name(".symtab").iter_symbols()
                 if s["st_shndx"] == "SHN_UNDEF" and s.name
                 and s["st_info"]["bind"] != "STB_WEAK"]
    assert undefined == []


def test_udivdi3_is_ours(elf):
    syms = symbols(elf)
    assert "__udivdi3" in syms and "__umoddi3" in syms


def test_new_source_files_join_the_build(tmp_path):
    """The Makefile takes every *.c and *.S (a wildcard): a driver file dropped
    into guest/ is compiled and linked without touching the Makefile."""
    dst = tmp_path / "guest"
    shutil.copytree(GUEST, dst, ignore=shutil.ignore_patterns("*.o", "*.elf"))
    (dst / "zz_extra.c").write_text(
        '#include "kernel.h"\nint zz_extra_probe(void) { return 42; }\n')
    (dst / "zz_extra_asm.S").write_text(
        "\t.text\n\t.globl zz_extra_asm_probe\nzz_extra_asm_probe:\n\tret\n")
    r = subprocess.run(["make", "-C", str(dst)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    for name in ("guest.elf", "guest-pae.elf"):
        with open(dst / name, "rb") as f:
            syms = symbols(ELFFile(f))
        assert "zz_extra_probe" in syms and "zz_extra_asm_probe" in syms
        assert syms["zz_extra_probe"] >= 0xC1000000


def test_page_tables_and_stack_are_page_aligned(elf):
    """swapper_pg_dir is a page directory (4096-aligned), and the boot stack
    and trap stack the Host pins must not straddle more pages than we say."""
    syms = symbols(elf)
    assert syms["swapper_pg_dir"] % 4096 == 0
    assert syms["trap_stack"] % 4096 == 0
    assert syms["_end"] % 4096 == 0
