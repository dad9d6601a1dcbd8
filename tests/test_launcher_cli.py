"""The Launcher's command line and its one-line deaths (launcher.py).

Every bad invocation must end the way the C Launcher's err()/errx() did:
"lguest: <message>" on stderr, exit status 1, and never a Python traceback.
None of these get as far as running a Guest.
"""
import re
import struct

import pytest

from conftest import Launcher, assert_no_traceback, elf32, launch, last_words, one_line_death

# The C's three lines, then one for our own options (--trace, --stats: issue 17).
USAGE = ("lguest: Usage: lguest [--verbose] "
         "[--tunnet=(<ipaddr>|bridge:<bridgename>)\n"
         "|--block=<filename>|--initrd=<filename>]...\n"
         "<mem-in-mb> vmlinux [args...]\n"
         "pylguest's own: [--trace=<filename> [--trace-events=<n>]] [--stats]\n")


def run(*args, timeout=30):
    return launch(list(args), timeout=timeout)


@pytest.mark.parametrize("args", [
    [],                                   # nothing at all
    ["64"],                               # no kernel
    ["--frobnicate", "64", "k"],          # unknown option
    ["--block"],                          # option without its argument
    ["-x", "64", "k"],
])
def test_usage_on_bad_arguments(args):
    proc = run(*args)
    assert_no_traceback(proc)
    assert proc.returncode == 1
    assert proc.stderr == USAGE
    assert proc.stdout == ""


def test_help():
    proc = run("--help")
    assert proc.returncode == 0
    assert proc.stderr == ""
    for word in ("--verbose", "--tunnet", "--block", "--initrd", "MEM_MB",
                 "KERNEL"):
        assert word in proc.stdout


def test_unreadable_kernel(tmp_path):
    line = one_line_death(run(64, tmp_path / "no-such-kernel"), "Failed to open")
    assert line == ("lguest: Failed to open %s: No such file or directory"
                    % (tmp_path / "no-such-kernel"))


def test_kernel_is_a_directory(tmp_path):
    one_line_death(run(64, tmp_path), "Reading kernel: Is a directory")


def test_malformed_elf(tmp_path):
    # A 64-bit x86 ELF header: the magic is right, the rest is not ours.
    hdr = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    hdr += struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0x400000, 64, 0, 0, 64,
                       56, 1, 64, 0, 0)
    (tmp_path / "k").write_bytes(hdr + bytes(200))
    line = one_line_death(run(64, tmp_path / "k"), "Malformed elf header")
    assert line == "lguest: Malformed elf header"


def test_truncated_elf(tmp_path):
    (tmp_path / "k").write_bytes(b"\x7fELF\x01\x01\x01" + bytes(20))
    one_line_death(run(64, tmp_path / "k"), "Malformed elf header")


def test_not_a_bzimage(tmp_path):
    (tmp_path / "k").write_bytes(b"#!/bin/sh\necho I am not a kernel\n" * 100)
    line = one_line_death(run(64, tmp_path / "k"), "bzImage")
    assert line == "lguest: This doesn't look like a bzImage to me"


def test_empty_kernel(tmp_path):
    (tmp_path / "k").write_bytes(b"")
    one_line_death(run(64, tmp_path / "k"), "bzImage")


@pytest.mark.parametrize("mem", ["abc", "64M", "-1", "0", "1e3", "99999", ""])
def test_memory_not_a_number_or_out_of_range(mem, tmp_path):
    one_line_death(run(mem, tmp_path / "kernel"), "Memory size")


def test_kernel_segment_too_big_for_memory(tmp_path):
    # A kernel loaded at 16 MB, like Linux (and our guest.elf): with 8 MB of
    # RAM it cannot fit.
    (tmp_path / "k").write_bytes(elf32([(1, 0x1000000, b"k" * 4096, 4096)],
                                       0x1000000))
    one_line_death(run(8, tmp_path / "k"), "doesn't fit in 8 MB of memory")


def test_missing_initrd(tmp_path):
    (tmp_path / "k").write_bytes(elf32([(1, 0x1000000, b"k" * 4096, 4096)],
                                       0x1000000))
    one_line_death(run("--initrd=%s" % (tmp_path / "nope"), 64, tmp_path / "k"),
                   "Failed to open")


def test_missing_block_file(tmp_path):
    one_line_death(run("--block=%s" % (tmp_path / "nope"), 64, tmp_path / "k"),
                   "Failed to open")


def test_too_many_devices(tmp_path):
    """The device page is one page: enough block devices overflow it before
    their vrings exhaust the 256 device pages (a block descriptor takes 33
    bytes and two vring pages; 125 of them need 4125 bytes)."""
    img = tmp_path / "disk"
    img.write_bytes(bytes(4096))
    proc = run(*["--block=%s" % img] * 130, 64, tmp_path / "k", timeout=60)
    one_line_death(proc, "Too many devices")


def test_command_line_too_long(tmp_path):
    (tmp_path / "k").write_bytes(elf32([(1, 0x1000000, b"k" * 4096, 4096)],
                                       0x1000000))
    one_line_death(run(64, tmp_path / "k", "x" * 3000), "command line too long")


def test_verbose_says_what_the_c_launcher_said(tmp_path, guest_elf):
    img = tmp_path / "disk"
    img.write_bytes(bytes(1 << 20))
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"i" * 5000)
    proc = run("--verbose", "--block=%s" % img, "--initrd=%s" % initrd,
               64, guest_elf, "lgtest=hcall", timeout=60)
    assert_no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    m = re.search(r"^Guest base is at (0x[0-9a-f]+)$", out, re.M)
    assert m, out
    base = int(m.group(1), 16)
    # The same words, in the C's order: devices as they were set up (the
    # console last), the kernel's sections, the initrd, the Guest's range.
    order = ["device 0: virtblock 2048 sectors", "Guest base is at",
             "device 1: console", "Section 0: size ", "mapped initrd",
             "Guest: ", "Notify on address 0x"]
    where = [out.index(s) for s in order]
    assert where == sorted(where), out
    assert re.search(r"^Section \d+: size \d+ addr 0x1000000$", out, re.M)
    # initrd: page-aligned size at the top of RAM, as a Launcher address.
    assert "mapped initrd %s size=8192 @ %#x\n" % (initrd, base + (64 << 20) - 8192) in out
    # guest_limit: 64 MB of RAM, the device page and three vrings' pages.
    m = re.search(r"^Guest: (0x[0-9a-f]+) - (0x[0-9a-f]+) \((0x[0-9a-f]+)\)$",
                  out, re.M)
    assert int(m.group(1), 16) == base
    assert int(m.group(2), 16) - base == int(m.group(3), 16)
    assert int(m.group(3), 16) == (64 << 20) + 4096 * (1 + 2 + 2 + 2)
    assert "Output to console" in out
    assert "lgtest hcall: PASS" in out


def test_guest_death_reason_and_status(guest_elf):
    proc = run(64, guest_elf, "lgbad=hcall")
    assert_no_traceback(proc)
    assert proc.returncode == 1
    # stdin is /dev/null, so the console's end-of-input warning may come
    # first; the death is the last line.
    assert last_words(proc, 1) == "lguest: Bad hypercall 99"


@pytest.mark.parametrize("verbose", [[], ["--verbose"]])
def test_stdout_closed_early(guest_elf, verbose):
    """`launcher.py ... | head -1`: a clean one-line death."""
    with Launcher([*verbose, "64", guest_elf, "lgtest=timer"],
                  prefix=["bash", "-c", '"$@" | head -1; exit ${PIPESTATUS[0]}', "bash"]) as run:
        proc = run.finish(30)
    assert len(proc.stdout.splitlines()) == 1
    assert last_words(proc, 1) in ("lguest: Writing console output: Broken pipe",
                                   "lguest: Writing to stdout: Broken pipe"), proc.stderr
