"""The host's TSC rate, for lguest_data.tsc_khz (as lguest_arch_init_hypercalls()).

The 3.16 Host told the Guest its own tsc_khz when the TSC was constant
(X86_FEATURE_CONSTANT_TSC) and not marked unstable, and 0 otherwise, in which case
the Guest calibrated against the clock.  With the TSC rate known, Linux gets a TSC
clocksource instead of lguest_clock, whose lguest_data.time only moves when the Host
delivers an interrupt.

unicorn's "rdtsc" reads the host's own time-stamp counter, so the same rule works
here: if /proc/cpuinfo says the TSC is constant and keeps running in idle states
(constant_tsc, nonstop_tsc), we measure its rate against CLOCK_MONOTONIC.  The
measurement spans the Guest's early boot: one sample when the engine is made
(LHREQ_INITIALIZE), the other at LGUEST_INIT, waiting there only if less than
MIN_SPAN has passed.  Each sample brackets the rdtsc between two clock reads, so its
error is known and small against the span.
"""

import time

from unicorn import UC_ARCH_X86, UC_MODE_32, Uc
from unicorn import x86_const as X

MIN_SPAN_NS = 20_000_000         # 20 ms: a few microseconds of jitter is < 0.05 %
_RDTSC = b"\x0f\x31"             # rdtsc


def tsc_is_invariant(cpuinfo="/proc/cpuinfo"):
    """True if the host's TSC ticks at a constant rate whatever the CPU does."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    return "constant_tsc" in flags and "nonstop_tsc" in flags
    except OSError:
        pass
    return False


class TscRate:
    """Measures the TSC rate over [creation, khz()].  khz() returns 0 when the TSC is
    not invariant (and then costs nothing)."""

    def __init__(self, invariant=None):
        self.invariant = tsc_is_invariant() if invariant is None else invariant
        self._uc = None
        self._first = None
        if self.invariant:
            # A scratch engine of our own: running one instruction on the Guest's
            # would disturb its registers.
            self._uc = Uc(UC_ARCH_X86, UC_MODE_32)
            self._uc.mem_map(0x1000, 0x1000)
            self._uc.mem_write(0x1000, _RDTSC)
            self._first = self.sample()

    def _rdtsc(self):
        uc = self._uc
        uc.emu_start(0x1000, 0x1000 + len(_RDTSC))
        return (uc.reg_read(X.UC_X86_REG_EDX) << 32) | uc.reg_read(X.UC_X86_REG_EAX)

    def sample(self):
        """(ns, tsc): the TSC and the monotonic clock at (nearly) the same instant;
        the tightest of three brackets."""
        best = None
        for _ in range(3):
            t0 = time.monotonic_ns()
            tsc = self._rdtsc()
            t1 = time.monotonic_ns()
            if best is None or t1 - t0 < best[0]:
                best = (t1 - t0, (t0 + t1) // 2, tsc)
        return best[1], best[2]

    def khz(self):
        """The TSC rate in kHz (0: not invariant, the Guest must calibrate)."""
        if not self.invariant:
            return 0
        ns0, tsc0 = self._first
        wait = MIN_SPAN_NS - (time.monotonic_ns() - ns0)
        if wait > 0:
            time.sleep(wait / 1e9)
        ns1, tsc1 = self.sample()
        return int(round((tsc1 - tsc0) * 1_000_000 / (ns1 - ns0)))
