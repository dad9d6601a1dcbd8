"""What an unmodified Linux 3.16 lguest Guest does that our own Guest does not, and the
answer the 3.16 Host gave it (tiny assembly Guests from tests/guests/)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "guests"))
from harness import TinyGuest  # noqa: E402

LHCALL_SHUTDOWN = 2
LGUEST_SHUTDOWN_RESTART = 2
PAGE_OFFSET = 0xC0000000


def test_reboot_with_no_reason_still_restarts():
    # "reboot" without an argument: kernel_restart(NULL) -> lguest_restart(NULL) makes
    # SHUTDOWN(__pa(NULL), RESTART), and __pa(NULL) is 4G - PAGE_OFFSET, past a small
    # Guest's memory.  The 3.16 Host killed it for the bad read, then overrode the
    # reason with -ERESTART: the Launcher restarts rather than dying.
    null_pa = (0 - PAGE_OFFSET) & 0xFFFFFFFF
    g = TinyGuest("deaths", 0, (LHCALL_SHUTDOWN, null_pa, LGUEST_SHUTDOWN_RESTART, 0))
    try:
        notes, died = g.run()
    finally:
        g.close()
    assert died.restart and not died.poweroff
    assert died.reason == "bad read address %#x len 128" % null_pa


LHCALL_LOAD_IDT_ENTRY = 6
LHCALL_SET_PTE = 14
# Linux's double-fault entry: a task gate (type 5) on GDT_ENTRY_DOUBLEFAULT_TSS (31).
TASK_GATE = (31 * 8) << 16, 0x00008500


def hcall_guest(*params):
    g = TinyGuest("deaths", 0, params)
    try:
        notes, died = g.run()
        return g, died
    finally:
        g.close()


def test_double_fault_task_gate_is_ignored():
    # lguest_load_idt() hands the Host every entry of Linux's IDT, vector 8's task
    # gate included: the 3.16 Host skipped vector 8 before looking at the type.
    _, died = hcall_guest(LHCALL_LOAD_IDT_ENTRY, 8, *TASK_GATE)
    assert died.poweroff, died.reason


def test_task_gate_elsewhere_kills():
    _, died = hcall_guest(LHCALL_LOAD_IDT_ENTRY, 9, *TASK_GATE)
    assert died.reason == "bad IDT type 5"


def test_flush_tlb_single_does_not_touch_guest_memory():
    # lguest_flush_tlb_single() is SET_PTE(current cr3, addr, 0): "set it to zero" in
    # the Host's shadow, never in the Guest's own table.
    g = TinyGuest("deaths", 0, (LHCALL_SET_PTE, 0x3000, 0x00400000, 0))
    try:
        g.poke(0x3000 + 4 * 1, 0x00400067)
        g.poke(0x3000 + 4 * 1023, 0x12345067)
        g.poke(0x400000, 0x00777063)           # the PTE for 0x400000 in that table
        notes, died = g.run()
        assert died.poweroff, died.reason
        assert g.peek(0x3000 + 4 * 1) == 0x00400067
        assert g.peek(0x3000 + 4 * 1023) == 0x12345067
        assert g.peek(0x400000) == 0x00777063
    finally:
        g.close()


def test_set_pte_in_the_switcher_kills():
    _, died = hcall_guest(LHCALL_SET_PTE, 0x3000, 0xFFC00000, 0)
    assert died.reason == "attempt to set pte into Switcher pages"
