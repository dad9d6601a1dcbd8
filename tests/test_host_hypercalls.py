"""The Host's hypercalls, driven straight through LguestDev by tiny assembly Guests
(tests/guests/hypercalls.S): each effect and each kill message of DESIGN §4."""
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "guests"))
from harness import LHREQ_IRQ, guest_fixture  # noqa: E402

from host.tsc import tsc_is_invariant  # noqa: E402


guest = guest_fixture("hypercalls")


def test_first_hypercall_must_be_init(guest):
    notes, died = guest(0).run()
    assert notes == [] and died.reason == "hypercall 5 before INIT"
    assert not died.poweroff and not died.restart


def test_init_twice(guest):
    notes, died = guest(1).run()
    assert notes == [0x100]
    assert died.reason == "already have lguest_data"


def test_bad_hypercall(guest):
    assert guest(2).run()[1].reason == "Bad hypercall 99"


def test_set_pmd_is_bad_on_a_non_pae_host(guest):
    assert guest(13).run()[1].reason == "Bad hypercall 13"


def test_power_down(guest):
    notes, died = guest(3).run()
    assert died.reason == "CRASH: Power down" and died.poweroff and not died.restart


def test_restart(guest):
    died = guest(4).run()[1]
    assert died.reason == "CRASH: Rebooting" and died.restart and not died.poweroff


def test_panic_is_not_a_power_off(guest):
    died = guest(10).run()[1]
    assert died.reason == "CRASH: Kernel panic - not syncing: test"
    assert not died.poweroff and not died.restart


def test_notify_and_what_init_wrote(guest):
    before = time.time()
    notes, died = guest(5).run()
    assert notes[:2] == [0x1234, 0x5678]
    reserve_mem, tsc_plus_one, tv_sec = notes[2:]
    assert reserve_mem == 4 << 20
    # tsc_khz: the host's TSC rate if invariant (tests/test_host_tsc.py checks the
    # value), else 0: "calibrate from the timer".
    assert (tsc_plus_one - 1 > 100_000) == tsc_is_invariant()
    assert abs(tv_sec - before) < 5          # CLOCK_REALTIME
    assert died.poweroff


def test_dead_guest_stays_dead(guest):
    g = guest(2)
    g.run()
    for _ in range(2):
        with pytest.raises(Exception) as e:
            g.read()
        assert e.value.reason == "Bad hypercall 99"


def test_async_ring_in_order_stopping_after_notify(guest):
    g = guest(6)
    notes = []
    while True:
        try:
            v = g.read()
        except Exception as e:
            died = e
            break
        notes.append(v)
        if v == 0xA4:
            g.lg.write((LHREQ_IRQ, 1))       # the queued LOAD_IDT_ENTRY gave IRQ 1 a gate
    # A1 and A2 came from the ring, one per read(); the synchronous A3 waited for them.
    assert notes == [0xA1, 0xA2, 0xA3, 0xFFFF, 0xA4, 1]
    assert died.poweroff
    assert [e["vec"] for e in g.log()] == [0x21]


def test_async_ring_wraps(guest):
    notes, died = guest(12).run()
    assert notes == [64 * 0xFF] and died.poweroff


def test_bad_lguest_data(guest):
    assert guest(7).run()[1].reason == "bad guest page (null)"


def test_bad_syscall_vector(guest):
    assert guest(11).run()[1].reason == "bad syscall vector"


def test_load_gdt_entry(guest):
    g = guest(8)
    notes, died = g.run()
    # A DPL-0 data segment with base 0x1000 became usable at ring 1 (DPL raised to 1).
    assert notes == [0xFEEDF00D]
    assert died.reason == "too many gdt entries 32"
    gdt = g.lg.guest.gdt
    assert gdt[2 * 20 + 1] & 0x6000 == 1 << 13      # DPL fixed up to 1
    assert gdt[2 * 20 + 1] & 0x100                  # accessed bit preset
    assert gdt[2 * 10 + 1] & 0x6000 == 0            # LGUEST_CS untouched by the Guest


def test_load_tls_reloads_segments(guest):
    notes, died = guest(9, (0x1111, 0x2222)).run()
    # %gs on TLS entry 7 sees the new base after the second LOAD_TLS without a reload,
    # as after the Switcher's segment reload on every Guest entry.
    assert notes == [0x1111, 0x2222] and died.poweroff
