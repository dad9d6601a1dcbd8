"""Traps and faults reflected into the Guest, from ring 1 and ring 3 (tests/guests/traps.S)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "guests"))
from harness import guest_fixture  # noqa: E402

PD, PT = 0x200000, 0x201000


guest = guest_fixture("traps")


def build_tables(g, bad_pte=None, bad_pde=None):
    """A page directory at PD: 0-4 MiB 1:1 (user+rw) except 0x3ff000 absent and
    0x3fe000 read-only; optionally a PTE or PDE pointing outside the Guest."""
    for i in range(1024):
        g.poke(PT + 4 * i, (i << 12) | 0x7)
    g.poke(PT + 4 * 0x3FF, 0)
    g.poke(PT + 4 * 0x3FE, 0x3FE000 | 0x5)
    if bad_pte is not None:
        g.poke(PT + 4 * 0x3FD, bad_pte | 0x7)
    g.poke(PD, PT | 0x67)
    if bad_pde is not None:
        g.poke(PD + 4, bad_pde | 0x67)


def test_ring1_traps(guest):
    g = guest(0)
    notes, died = g.run()
    assert notes == [6] and died.poweroff
    log = g.log()
    got = [(e["vec"], e["err"], e["eip"]) for e in log]
    assert got == [
        (6, 0, g.sym("ud_at")),                       # #UD at the instruction
        (0, 0, g.sym("de_at")),                       # #DE
        (3, 0, g.sym("int3_at") + 1),                 # int3: after it (DPL 3 gate)
        (13, (0x30 << 3) | 2, g.sym("int30_at")),     # int $0x30 through a DPL-0 gate
        (13, 0, g.sym("hlt_at")),                     # hlt: #GP(0) emulate_insn can't do
    ]                                                  # ...and cli was emulated: no entry
    assert all(e["cs"] == 0x61 for e in log)


def test_page_faults_and_cr2(guest):
    g = guest(1)
    build_tables(g)
    notes, died = g.run()
    assert died.poweroff
    assert notes == [0xFFFF, 4]        # the GDT page reads fine: descriptor 12's low word
    got = [(e["vec"], e["err"], e["eip"], e["cr2"]) for e in g.log()]
    assert got == [
        (14, 0, g.sym("pf_read_at"), 0x3FF000),       # not present, read
        (14, 3, g.sym("pf_write_at"), 0x3FE000),      # present, write
        (14, 3, g.sym("pf_gdt_at"), 0xFFC00000),      # the Host's GDT is read-only
    ]
    # the Host's top-slot entry went into the Guest's page directory
    assert g.peek(PD + 4 * 1023) & 1


def test_ring3_traps(guest):
    g = guest(2)
    notes, died = g.run()
    assert died.poweroff
    log = g.log()
    got = [(e["vec"], e["err"], e["eip"]) for e in log]
    assert got == [
        (0x80, 0, g.sym("user_hc_at") - 10 + 0),   # int $0x80 from user: after it
        (13, 0xFA, g.sym("user_hc_at")),           # int $0x1f from ring 3 refused
        (13, 0, g.sym("user_cli_at")),             # cli from ring 3: not emulated
        (14, 4, g.sym("user_pf_at")),              # user read, not present
        (13, 0x182, g.sym("user_int30_at")),       # DPL-0 gate from ring 3
        (0x80, 0, log[5]["eip"]),
    ]
    assert log[3]["cr2"] == 0x7FF00000
    for e in log:
        assert e["cs"] == 0x73 and e["uss"] == 0x7B and e["uesp"] == 0x50000


def test_device_not_available_only_with_ts(guest):
    g = guest(3)
    notes, died = g.run()
    assert notes == [2]
    (e,) = g.log()
    assert e["vec"] == 7 and e["eip"] == g.sym("nm_at")


def test_in_out_from_the_kernel(guest):
    notes, died = guest(7).run()
    assert notes == [0x123456FF, 0x1234FFFF, 0xFFFFFFFF, 1] and died.poweroff


def test_unhandled_trap_kills(guest):
    g = guest(4)
    assert g.run()[1].reason == "unhandled trap 6 at %#x (0x0)" % g.sym("ud2_at")


def test_unhandled_page_fault_names_cr2(guest):
    g = guest(5)
    assert g.run()[1].reason == "unhandled trap 14 at %#x (0x7ff00000)" % g.sym("upf_at")


def test_writing_the_gdt_without_a_handler(guest):
    died = guest(6).run()[1]
    assert died.reason.startswith("unhandled trap 14 at ") and died.reason.endswith("(0xffc00008)")


def test_sse_and_fxsave(guest):
    notes, died = guest(8).run()
    assert notes == [0x40000000, 0x40000000, 1] and died.poweroff


def test_msr_probe_before_any_idt_reads_zero(guest):
    """Linux's early microcode loader probes MSRs in startup_32, before it has an
    IDT; the Host answers zeroes then (a departure from the real Host, which killed
    the Guest), and reflects a #GP once the Guest has a handler."""
    g = guest(9)
    notes, died = g.run()
    assert died.poweroff
    assert notes == [1, 2]
    (e,) = g.log()
    assert (e["vec"], e["err"], e["eip"]) == (13, 0, g.sym("msr_at"))
