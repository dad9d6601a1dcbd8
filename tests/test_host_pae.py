"""PAE Guests (tests/guests/pae.S): the Host learns from the first NEW_PGTABLE that the
tables are PAE's three levels of 64-bit entries, lets unicorn walk them, drops cached
translations on SET_PTE, SET_PMD and SET_PGD, keeps the Switcher's two PMD entries in
place, honours NX, and kills with the 3.16 Host's words for every bad entry."""
import struct
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "guests"))
from harness import TinyGuest  # noqa: E402

PGD, PMD0, PT0, PT1, PMD1, PT2, PMD3, PGD2, PMD1B = (
    0x180000, 0x181000, 0x182000, 0x183000, 0x184000, 0x185000, 0x186000, 0x187000,
    0x188000)
NXPAGE = 0x1F0000
NX = 1 << 63


def poke64(g, addr, val):
    struct.pack_into("<Q", g.mem, addr, val)


def peek64(g, addr):
    return struct.unpack_from("<Q", g.mem, addr)[0]


def make(mode, params=(), top=True, entries=()):
    """A PAE Guest: 0-2 MiB 1:1, 2-4 MiB -> 0x500000, 1 GiB up -> 0x600000 (through
    PMD1; PMD1B maps it to 0x500000), and with top the pgd's last entry over the
    (empty) PMD page PMD3, as Linux's kernel PMD.  entries: more (addr, u64) pokes."""
    g = TinyGuest("pae", mode, params)
    for i in range(512):
        poke64(g, PT0 + 8 * i, (i << 12) | 0x7)
        poke64(g, PT1 + 8 * i, (0x500000 + (i << 12)) | 0x7)
        poke64(g, PT2 + 8 * i, (0x600000 + (i << 12)) | 0x7)
    poke64(g, PMD0, PT0 | 0x67)
    poke64(g, PMD0 + 8, PT1 | 0x67)
    poke64(g, PMD1, PT2 | 0x67)
    poke64(g, PMD1B, PT1 | 0x67)
    poke64(g, PGD, PMD0 | 1)
    poke64(g, PGD + 8, PMD1 | 1)
    if top:
        poke64(g, PGD + 24, PMD3 | 1)
    for addr, val in entries:
        poke64(g, addr, val)
    g.poke(0x1FD000, 0xAAAA)
    g.poke(0x1FC000, 0xBBBB)
    g.poke(0x500000, 0xCCCC)
    g.poke(0x0, 0xDDDD)
    g.poke(0x600000, 0xEEEE)
    return g


@pytest.fixture
def pae():
    made = []

    def run(*args, **kw):
        g = make(*args, **kw)
        made.append(g)
        notes, died = g.run()
        return g, notes, died
    yield run
    for g in made:
        g.close()


def test_set_pte_with_64_bit_entries(pae):
    g, notes, died = pae(0)
    # old page, still the old page (the TLB remembers), then the new page
    assert notes == [0xAAAA, 0xAAAA, 0xBBBB] and died.poweroff
    assert g.lg.guest.pae


def test_set_pmd(pae):
    _, notes, died = pae(1)
    assert notes == [0xCCCC, 0xCCCC, 0xDDDD] and died.poweroff


def test_set_pgd(pae):
    _, notes, died = pae(2, (PMD1B,))
    assert notes == [0xEEEE, 0xEEEE, 0xCCCC] and died.poweroff


def test_switcher_entries_in_the_guests_kernel_pmd(pae):
    g, notes, died = pae(3, (1,))
    assert notes == [0xFFFF, 0xFFFF, 0x77, 0xFFFF] and died.poweroff
    host = g.lg.guest.host
    assert (peek64(g, PMD3 + 8 * 510), peek64(g, PMD3 + 8 * 511)) == host.switcher_pmds
    assert all(peek64(g, PMD3 + 8 * i) == 0 for i in range(510))
    assert peek64(g, PGD + 24) == PMD3 | 1          # the Guest's own entry, untouched


def test_switcher_pmd_lent_when_the_top_entry_is_empty(pae):
    g, notes, died = pae(3, (0,), top=False)
    assert notes == [0xFFFF] and died.poweroff
    assert peek64(g, PGD + 24) == g.lg.guest.host.lent_pgd


def test_nx_page_faults_on_fetch_only():
    """Reading the page is fine; calling into it faults with error 0x11 (present,
    instruction fetch) at the page, and runs once the Guest clears NX."""
    g = make(4, entries=[(PT0 + 8 * (NXPAGE >> 12), NXPAGE | 0x7 | NX)])
    try:
        g.mem[NXPAGE:NXPAGE + 6] = b"\xb8\xde\xc0\x0d\x60\xc3"   # movl $0x600dc0de, %eax; ret
        notes, died = g.run()
        assert notes == [0x600DC0DE] and died.poweroff
        faults = [e for e in g.log() if e["vec"] == 14]
        assert len(faults) == 1
        assert (faults[0]["err"], faults[0]["cr2"], faults[0]["eip"]) == (0x11, NXPAGE, NXPAGE)
    finally:
        g.close()


def test_user_mode_and_emulation(pae):
    g, notes, died = pae(5)
    assert notes == [1] and died.poweroff
    last = g.log()[-1]
    assert last["vec"] == 0x80 and last["cs"] == 0x73 and last["uss"] == 0x7B


def test_drop_translations_through_the_kernel_alias():
    """The block worker wrote new code: the Host finds the page at kernel_address + pa
    through the PAE tables (here the pgd's top entry maps 0xC0000000 to physical 0)."""
    g = make(7, entries=[(PMD3, PT0 | 0x67)])
    try:
        g.mem[0x1E0000:0x1E0006] = b"\xb8\x11\x01\x00\x00\xc3"
        assert g.read() == 0x111
        g.mem[0x1E0000:0x1E0006] = b"\xb8\x22\x02\x00\x00\xc3"
        assert g.read() == 0x111                          # stale translation, as expected
        g.lg.drop_translations(0x1E0000, 6)
        assert g.read() == 0x222
    finally:
        g.close()


def pte(vaddr):
    return PT0 + 8 * ((vaddr >> 12) & 511)


@pytest.mark.parametrize("params, entries, reason", [
    # a PMD entry over a page table outside the Guest: found at the fault through it
    ((0, 0, 0, 0, 0x400000), [(PMD0 + 16, 0x7F000000 | 0x67)],
     "bad page middle directory entry"),
    # a 2 MiB PMD entry, or one with NX: found at SET_PMD
    ((13, PMD0, 2, 0, 0x400000), [(PMD0 + 16, 0x000000 | 0xE7)],
     "bad page middle directory entry"),
    ((13, PMD0, 2, 0, 0x400000), [(PMD0 + 16, PT1 | 0x67 | NX)],
     "bad page middle directory entry"),
    # a 2 MiB PMD entry outside the Guest, never announced: the CPU reaches past memory
    ((0, 0, 0, 0, 0x400000), [(PMD0 + 16, 0x7E000000 | 0xE7)],
     "bad page middle directory entry"),
    # pgd entries: outside the Guest (found at NEW_PGTABLE), flags beyond present
    # (found at SET_PGD), a fresh pgd with one (found at its NEW_PGTABLE)
    ((0, 0, 0, 0, 0x40000000), [(PGD + 8, 0x7F000000 | 1)], "bad page directory entry"),
    ((15, PGD, 1, 0, 0x40000000, PMD1 | 0x7, PGD + 8), [], "bad page directory entry"),
    ((4, PGD2, 0, 0), [(PGD2, PMD0 | 1), (PGD2 + 8, PMD1 | 0x63)],
     "bad page directory entry"),
    ((15, PGD, 5, 0), [], "Attempt to set pgd 5/4"),
    # PTEs outside the Guest, below and above 4 GiB
    ((0, 0, 0, 0, 0x1FD000), [(pte(0x1FD000), 0x7E000000 | 0x7)], "bad page table entry"),
    ((0, 0, 0, 0, 0x1FD000), [(pte(0x1FD000), (1 << 32) | 0x1FD000 | 0x7)],
     "bad page table entry"),
    ((4, 0x7FFFF000, 0, 0), [], "bad read address 0x7ffff000 len 8"),
    ((7, 0x69, 0x1FE000, 2), [(pte(0x1FD000), 0)], "bad stack page 0x1fdfff"),
    ((14, PGD, 0xFFC01000, 0), [], "attempt to set pte into Switcher pages"),
], ids=["pmd-outside", "pmd-2mib", "pmd-nx", "pmd-2mib-outside", "pgd-outside",
        "pgd-flags", "new-pgd-flags", "set-pgd-index", "pte-outside", "pte-above-4g",
        "pgd-address", "stack-page", "switcher-pte"])
def test_deaths(pae, params, entries, reason):
    _, _, died = pae(6, params, entries=entries)
    assert died.reason == reason
