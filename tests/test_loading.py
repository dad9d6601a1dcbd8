"""Loading a Guest (launcher.py): ELF segments, bzImage payload, initrd,
boot_params and the command line, checked byte by byte in a real
GuestMemory.  These need no Host: they call the loader functions directly.
"""
import os
import struct

import pytest

import launcher
from conftest import bzimage, elf32, launch, tiny_bzimage_guest
from devices.errors import LauncherError
from devices.memory import GuestMemory

MB = 1 << 20


@pytest.fixture
def mem():
    return GuestMemory(64 * MB)


def load(mem, tmp_path, data, name="kernel"):
    path = tmp_path / name
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        return launcher.load_kernel(mem, fd)
    finally:
        os.close(fd)


def u32(mem, addr):
    return struct.unpack_from("<I", mem.view, addr)[0]


# --- ELF ---------------------------------------------------------------------

def test_elf_segments_land_at_p_paddr(mem, tmp_path):
    text = os.urandom(5000)
    data = os.urandom(300)
    # Dirty the bss area first: the loader must leave it zero only because
    # the memory is fresh, and must not touch bytes past memsz either.
    entry, end = load(mem, tmp_path, elf32(
        [(1, 0x1000000, text, len(text)),
         (4, 0, b"NOTE", 4),                       # PT_NOTE: not loaded
         (1, 0x1002000, data, len(data) + 0x800)],  # data + bss
        entry=0x1000010))
    assert entry == 0x1000010
    assert bytes(mem.view[0x1000000:0x1000000 + len(text)]) == text
    assert bytes(mem.view[0x1002000:0x1002000 + len(data)]) == data
    assert bytes(mem.view[0x1002000 + len(data):0x1002000 + len(data) + 0x800]) \
        == bytes(0x800)
    assert end == 0x1002000 + len(data) + 0x800
    # Nothing landed at the virtual addresses' low bits or at 0.
    assert bytes(mem.view[0:4096]) == bytes(4096)


def test_real_guest_elf_loads_where_its_headers_say(mem, guest_elf):
    from elftools.elf.elffile import ELFFile
    fd = os.open(guest_elf, os.O_RDONLY)
    try:
        entry, _ = launcher.load_kernel(mem, fd)
    finally:
        os.close(fd)
    with open(guest_elf, "rb") as f:
        elf = ELFFile(f)
        assert entry == elf.header["e_entry"]
        loads = [s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
        assert loads
        for seg in loads:
            pa = seg["p_paddr"]
            assert bytes(mem.view[pa:pa + seg["p_filesz"]]) == seg.data()


@pytest.mark.parametrize("kw", [
    dict(e_type=1),                 # ET_REL
    dict(machine=62),               # EM_X86_64
    dict(phentsize=56),
    dict(phnum=0),
    dict(phnum=65536 // 32 + 1),
    dict(ident_class=2),            # ELFCLASS64 header on 32-bit fields
])
def test_malformed_elf_header(mem, tmp_path, kw):
    with pytest.raises(LauncherError, match="^Malformed elf header$"):
        load(mem, tmp_path, elf32([(1, 0x100000, b"x" * 64, 64)], 0x100000, **kw))


def test_truncated_elf_is_malformed(mem, tmp_path):
    good = elf32([(1, 0x100000, b"x" * 64, 64)], 0x100000)
    with pytest.raises(LauncherError, match="Malformed elf header"):
        load(mem, tmp_path, good[:40])
    # Headers intact but the program header table cut short.
    with pytest.raises(LauncherError, match="Malformed elf header"):
        load(mem, tmp_path, good[:60])


def test_segment_outside_ram_is_refused(mem, tmp_path):
    with pytest.raises(LauncherError, match="doesn't fit in 64 MB"):
        load(mem, tmp_path, elf32([(1, 64 * MB - 16, b"y" * 32, 32)], 0))
    # bss past the end counts too, even with little file data.
    with pytest.raises(LauncherError, match="doesn't fit"):
        load(mem, tmp_path, elf32([(1, 60 * MB, b"y" * 32, 8 * MB)], 0))
    # A segment aimed at the device pages is refused, not loaded there.
    assert bytes(mem.view[64 * MB:64 * MB + 64]) == bytes(64)


def test_segment_data_missing_from_file(mem, tmp_path):
    img = elf32([(1, 0x100000, b"z" * 4096, 4096)], 0x100000)
    with pytest.raises(LauncherError, match="Reading offset"):
        load(mem, tmp_path, img[:-100])


# --- bzImage -------------------------------------------------------------------

def test_bzimage_payload_at_1m_entry_code32_start(mem, tmp_path):
    payload = os.urandom(70000)      # more than one 64K chunk
    entry, end = load(mem, tmp_path,
                      bzimage(payload, setup_sects=3, code32_start=0x100020))
    assert entry == 0x100020
    assert end == 0x100000 + len(payload)
    assert bytes(mem.view[0x100000:0x100000 + len(payload)]) == payload
    # The setup sectors themselves are not loaded anywhere.
    assert bytes(mem.view[0:0x1000]) == bytes(0x1000)


def test_bzimage_setup_sects_zero_means_four(mem, tmp_path):
    payload = b"\xAA" * 1000
    load(mem, tmp_path, bzimage(payload, setup_sects=0))
    # 4 setup sectors + the boot sector skipped: payload starts at 1M.
    assert bytes(mem.view[0x100000:0x100000 + 1000]) == payload
    assert mem.view[0x100000 + 1000] == 0


def test_not_a_bzimage(mem, tmp_path):
    with pytest.raises(LauncherError,
                       match="^This doesn't look like a bzImage to me$"):
        load(mem, tmp_path, bzimage(b"x" * 100, magic=b"HdrZ"))
    with pytest.raises(LauncherError, match="bzImage to me"):
        load(mem, tmp_path, b"tiny")


def test_bzimage_too_big_for_ram(tmp_path):
    small = GuestMemory(2 * MB)
    with pytest.raises(LauncherError, match="doesn't fit in 2 MB"):
        load(small, tmp_path, bzimage(bytes(MB + 1)))


# --- initrd -------------------------------------------------------------------------

def test_initrd_at_top_of_ram_page_aligned(mem, tmp_path):
    blob = os.urandom(10000)
    (tmp_path / "initrd").write_bytes(blob)
    size = launcher.load_initrd(mem, str(tmp_path / "initrd"))
    assert size == 12288                      # page aligned up
    where = 64 * MB - size
    assert bytes(mem.view[where:where + len(blob)]) == blob
    assert bytes(mem.view[where + len(blob):64 * MB]) == bytes(size - len(blob))
    launcher.setup_boot_params(mem, [], size)
    assert u32(mem, 0x218) == where           # ramdisk_image
    assert u32(mem, 0x21C) == size            # ramdisk_size


def test_initrd_missing_or_overlapping(mem, tmp_path):
    with pytest.raises(LauncherError, match="Failed to open .*nope"):
        launcher.load_initrd(mem, str(tmp_path / "nope"))
    (tmp_path / "big").write_bytes(bytes(8 * MB))
    with pytest.raises(LauncherError, match="doesn't fit"):
        launcher.load_initrd(mem, str(tmp_path / "big"), kernel_end=60 * MB)


# --- boot_params ------------------------------------------------------------------------

def test_boot_params_at_design_offsets(mem):
    launcher.setup_boot_params(mem, ["lgtest=hcall", "root=/dev/vda", "quiet"])
    v = mem.view
    assert v[0x1E8] == 1                                        # e820_entries
    assert struct.unpack_from("<QQI", v, 0x2D0) == (0, 64 * MB, 1)  # e820_map[0]
    assert struct.unpack_from("<H", v, 0x206)[0] == 0x207       # version
    assert v[0x210] == 0xFF                                     # type_of_loader
    assert v[0x211] & 0x40                                      # KEEP_SEGMENTS
    assert u32(mem, 0x228) == 0x1000                            # cmd_line_ptr
    assert u32(mem, 0x230) == 0x1000000                         # kernel_alignment
    assert u32(mem, 0x23C) == 1                                 # hardware_subarch
    assert u32(mem, 0x218) == 0 and u32(mem, 0x21C) == 0        # no initrd
    line = b"lgtest=hcall root=/dev/vda quiet"
    assert bytes(v[0x1000:0x1000 + len(line) + 1]) == line + b"\0"
    # Nothing else in boot_params was written.
    touched = {0x1E8, 0x206, 0x207, 0x210, 0x211} | set(range(0x2D0, 0x2E4)) \
        | set(range(0x228, 0x22C)) | set(range(0x230, 0x234)) \
        | set(range(0x23C, 0x240))
    assert all(v[i] == 0 for i in range(4096) if i not in touched)


def test_empty_and_overlong_command_line(mem):
    launcher.setup_boot_params(mem, [])
    assert mem.view[0x1000] == 0
    with pytest.raises(LauncherError, match="command line too long"):
        launcher.setup_boot_params(mem, ["x" * 2048])


def test_ram_size_and_guest_limit_follow_c(mem):
    # The device page sits at the old top of RAM; guest_max leaves room for
    # DEVICE_PAGES pages in all, as in C main().
    assert launcher.ram_size(mem) == 64 * MB
    assert mem.guest_limit == 64 * MB
    assert mem.guest_max == 64 * MB + 256 * 4096


# --- a bzImage that really runs ------------------------------------------------------

def _tiny_bzimage_guest(code32_offset=0x10):
    """A bzImage whose payload is a few hand-assembled instructions: at
    code32_start it checks esi == 0 (boot_params at 0), the command line at
    0x1000 starts with "X" and hardware_subarch is 1, then makes
    LGUEST_INIT and SHUTDOWN("Power down").  Any failed check runs into
    ud2, which kills the Guest (conftest.tiny_bzimage_guest's layout)."""
    base = 0x100000
    code = bytearray()

    def jnz_to_ud2():
        here = 0x10 + len(code) + 2
        code.extend(b"\x75" + struct.pack("<b", 0 - here))

    code += b"\x85\xF6"                                   # test esi, esi
    jnz_to_ud2()
    code += b"\x80\x3D" + struct.pack("<I", 0x1000) + b"X"    # cmp byte [0x1000], 'X'
    jnz_to_ud2()
    code += b"\x83\x3D" + struct.pack("<I", 0x23C) + b"\x01"  # cmp dword [0x23C], 1
    jnz_to_ud2()
    code += b"\xB8" + struct.pack("<I", 1)                # mov eax, LHCALL_LGUEST_INIT
    code += b"\xBB" + struct.pack("<I", base + 0x2000)    # mov ebx, &lguest_data
    code += b"\xCD\x1F"                                   # int $0x1f
    code += b"\xB8" + struct.pack("<I", 2)                # mov eax, LHCALL_SHUTDOWN
    code += b"\xBB" + struct.pack("<I", base + 0x100)     # mov ebx, "Power down"
    code += b"\xB9" + struct.pack("<I", 1)                # mov ecx, LGUEST_SHUTDOWN_POWEROFF
    code += b"\xCD\x1F"                                   # int $0x1f
    code += b"\xEB\xFE"                                   # jmp .
    return tiny_bzimage_guest(bytes(code), data=b"Power down\0",
                              code32_offset=code32_offset)


def test_bzimage_boots_at_code32_start(tmp_path):
    (tmp_path / "bz").write_bytes(_tiny_bzimage_guest())
    proc = launch([16, tmp_path / "bz", "X-marks-the-spot"])
    assert "Traceback" not in proc.stderr
    assert proc.returncode == 0, proc.stderr
    assert "lguest: CRASH: Power down" in proc.stderr
    # The same image with another command line fails its own check.
    proc = launch([16, tmp_path / "bz", "Y"])
    assert proc.returncode == 1 and "Power down" not in proc.stderr, proc.stderr
    # And entered anywhere but code32_start it dies on the ud2s.
    (tmp_path / "bz0").write_bytes(_tiny_bzimage_guest(code32_offset=0))
    proc = launch([16, tmp_path / "bz0", "X"])
    assert proc.returncode == 1 and "Power down" not in proc.stderr, proc.stderr
