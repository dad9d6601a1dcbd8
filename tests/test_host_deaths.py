"""Every way the Host kills a Guest, with the Linux 3.16 Host's words (tests/guests/deaths.S).
Nothing a Guest does may end in a Python traceback: only GuestDied with a reason."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "guests"))
from harness import TinyGuest  # noqa: E402

PD, PT = 0x200000, 0x201000


def die(mode, params):
    g = TinyGuest("deaths", mode, params)
    try:
        if mode in (5, 6):
            for i in range(1024):
                g.poke(PT + 4 * i, (i << 12) | 0x7)
            g.poke(PT + 4 * 0x3FD, 0x7E000000 | 0x7)     # a page far outside the Guest
            g.poke(PT + 4 * 0x3FC, 0)                     # a hole
            g.poke(PD, PT | 0x67)
            g.poke(PD + 4, 0x7F000000 | 0x67)             # a page table outside the Guest
        notes, died = g.run()
        return died.reason
    finally:
        g.close()


@pytest.mark.parametrize("params, reason", [
    ((7, 0x68, 0x60000, 1), "bad stack segment 104"),
    ((7, 0x69, 0x60000, 3), "bad stack pages 3"),
    ((6, 0x21, 0x600000, 0x8500), "bad IDT type 5"),
    ((6, 300, 0, 0x8E00), "Setting idt entry 300"),
    ((14, 0, 0xFFC01000, 0), "attempt to set pte into Switcher pages"),
    ((15, 0, 1025, 0), "Attempt to set pgd 1025/1024"),
    ((4, 0x7FFFF000, 0, 0), "bad read address 0x7ffff000 len 4"),
    ((16, 0xFFFFFFF0, 0, 0), "bad read address 0xfffffff0 len 24"),
    ((18, 40, 0, 0), "too many gdt entries 40"),
    ((0xFFFFFFFF, 0, 0, 0), "Bad hypercall -1"),
    ((3, 0, 0, 0), "Bad hypercall 3"),
    ((13, 0x200000, 0, 0), "Bad hypercall 13"),      # SET_PMD: PAE Guests only
    ((1, 0x3000, 0, 0), "already have lguest_data"),
])
def test_hypercall_deaths(params, reason):
    assert die(0, params) == reason


def test_trap_frame_outside_memory():
    # SET_STACK to beyond the Guest's 16 MiB, then a trap from ring 3
    assert die(2, (0x2000000,)) == "bad write address 0x1fffffc len 4"


@pytest.mark.parametrize("addr", [0xFFFFFFF0, 0x00FFFFC0])
def test_shutdown_message_out_of_range(addr):
    assert die(3, (addr,)) == "bad read address %#x len 128" % addr


def test_bad_kernel_address():
    assert die(4, (0xFFC00000,)) == "bad kernel address 0xffc00000"


def test_page_table_entry_outside_memory():
    assert die(5, (0x3FD000,)) == "bad page table entry"


def test_page_directory_entry_outside_memory():
    assert die(5, (0x400000,)) == "bad page directory entry"


def test_unmapped_read_is_a_page_fault():
    assert die(5, (0x3FC000,)).startswith("unhandled trap 14 at ")


def test_stack_pages_must_be_mapped():
    assert die(6, (0x3FD000,)) == "bad stack page 0x3fcfff"


def test_stack_pages_mapped_ok():
    assert die(6, (0x3FC000 - 0x1000,)) == "CRASH: Power down"
