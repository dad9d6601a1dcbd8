"""Page tables: unicorn walks the Guest's own tables, so the Host's job is to drop cached
translations when the Guest says so (SET_PTE, SET_PGD, FLUSH_TLB) and to keep the Host's
top slot in every directory (tests/guests/paging.S)."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "guests"))
from harness import TinyGuest  # noqa: E402

PD, PT0, PT1 = 0x200000, 0x201000, 0x202000


def guest(mode):
    g = TinyGuest("paging", mode)
    for i in range(1024):
        g.poke(PT0 + 4 * i, (i << 12) | 0x7)
        g.poke(PT1 + 4 * i, (0x500000 + (i << 12)) | 0x7)
    g.poke(PD, PT0 | 0x67)
    g.poke(PD + 4, PT1 | 0x67)
    g.poke(0x3FD000, 0xAAAA)
    g.poke(0x3FC000, 0xBBBB)
    g.poke(0x500000, 0xCCCC)
    g.poke(0x0, 0xDDDD)                 # what 0x400000 reads through the 0-4 MiB table
    return g


@pytest.mark.parametrize("mode", [0, 1], ids=["SET_PTE", "FLUSH_TLB"])
def test_pte_change_seen_after_hypercall(mode):
    g = guest(mode)
    try:
        notes, died = g.run()
        # old page, still the old page (the TLB remembers), then the new page
        assert notes == [0xAAAA, 0xAAAA, 0xBBBB] and died.poweroff
    finally:
        g.close()


def test_set_pgd():
    g = guest(2)
    try:
        notes, died = g.run()
        assert notes == [0xCCCC, 0xCCCC, 0xDDDD] and died.poweroff
    finally:
        g.close()


def test_switcher_slot_restored():
    g = guest(3)
    try:
        notes, died = g.run()
        assert notes == [0xFFFF, 0x77, 0xFFFF] and died.poweroff
        assert g.peek(PD + 4 * 1023) == g.lg.guest.host.switcher_pde
    finally:
        g.close()
