"""lguest_data.tsc_khz: the host's TSC rate when it is invariant, else 0 (as
lguest_arch_init_hypercalls() did with CONSTANT_TSC)."""
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "guests"))
from harness import TinyGuest  # noqa: E402

from host.abi import LD_TSC_KHZ  # noqa: E402
from host.tsc import TscRate, tsc_is_invariant  # noqa: E402


def reference_khz(seconds=1.0):
    """The TSC rate measured independently, over a long span."""
    r = TscRate(invariant=True)
    ns0, t0 = r._first
    time.sleep(seconds)
    ns1, t1 = r.sample()
    return (t1 - t0) * 1e6 / (ns1 - ns0)


def test_rate_matches_a_long_measurement():
    ref = reference_khz()
    for _ in range(3):
        assert abs(TscRate(invariant=True).khz() - ref) / ref < 0.001


def test_not_invariant_means_zero():
    assert TscRate(invariant=False).khz() == 0


def test_cpuinfo_flags(tmp_path):
    f = tmp_path / "cpuinfo"
    f.write_text("processor\t: 0\nflags\t\t: fpu tsc constant_tsc nonstop_tsc sse2\n")
    assert tsc_is_invariant(str(f))
    f.write_text("processor\t: 0\nflags\t\t: fpu tsc constant_tsc sse2\n")
    assert not tsc_is_invariant(str(f))
    assert not tsc_is_invariant(str(tmp_path / "missing"))


def test_lguest_init_writes_tsc_khz():
    """A Guest that only powers off (scenario 3) has tsc_khz set by LGUEST_INIT."""
    g = TinyGuest("hypercalls", 3)
    try:
        notes, died = g.run()
        assert died.poweroff
        got = g.peek(g.sym("lguest_data") + LD_TSC_KHZ)
    finally:
        g.close()
    if not tsc_is_invariant():
        assert got == 0
    else:
        ref = reference_khz(0.5)
        assert abs(got - ref) / ref < 0.001, (got, ref)
