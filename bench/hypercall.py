"""How fast is the Host?  Prints the three numbers the Host's speed goals are about.

  hypercall round trip        Guest "int $0x1f" -> Python -> back        goal < 2 us
  SET_PTE round trip          the same, for the commonest paging call (a TLB flush)
  trap delivery               ring 3 "int $0x80" -> Guest handler -> iret goal < 10 us
  NOTIFY round trip           NOTIFY -> read() returns -> read() again    goal < 25 us
  BREAK latency               a Waker process's BREAK -> read() raises EAGAIN (median, max)
  clock event lateness        a 20 ms SET_CLOCKEVENT + HALT -> the timer interrupt wakes
                              the Guest: how much later than asked (median, max; the
                              tests only check it is never early)

Uses the tiny assembly Guest tests/guests/bench.S, run straight on LguestDev.
"""
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "guests"))

from harness import LHREQ_BREAK, GuestDied, TinyGuest  # noqa: E402

N = 200_000
NOTIFIES = 50_000


def per_op(mode, n):
    g = TinyGuest("bench", mode, (n,))
    try:
        assert g.read() == 1
        t = time.perf_counter()
        try:
            r = g.read()
            assert r == 2, r
        except GuestDied:
            pass                      # the trap benchmark ends with an unhandled #GP
        return (time.perf_counter() - t) / n
    finally:
        g.close()


def notify_round_trip(n):
    g = TinyGuest("bench", 2, (n,))
    try:
        assert g.read() == 3
        t = time.perf_counter()
        for _ in range(n - 1):
            g.read()
        return (time.perf_counter() - t) / (n - 1)
    finally:
        g.close()


def break_latency(n=50):
    """A forked Waker BREAKs a spinning Guest; it stamps the time in shared memory."""
    g = TinyGuest("bench", 3)
    try:
        assert g.read() == 1
        brk = g.lg.breaker()
        lat = []
        for _ in range(n):
            pid = os.fork()
            if pid == 0:
                time.sleep(0.002)
                g.poke(0x7100, time.monotonic_ns() & 0xFFFFFFFF)
                g.poke(0x7104, time.monotonic_ns() >> 32)
                os._exit(0 if brk.write((LHREQ_BREAK, 1)) else 1)
            try:
                g.read()
            except BlockingIOError:
                pass
            now = time.monotonic_ns()
            lat.append((now - (g.peek(0x7100) | g.peek(0x7104) << 32)) / 1e3)
            g.lg.write((LHREQ_BREAK, 0))
            os.waitpid(pid, 0)
        lat.sort()
        return lat[len(lat) // 2], lat[-1]
    finally:
        g.close()


def clock_event_lateness(n=20, delay_ns=20_000_000):
    """tests/guests/irqs.S scenario 4: arm the clock event, HALT, NOTIFY when the
    timer interrupt wakes us.  Returns (median, max) of (elapsed - delay) in us."""
    late = []
    for _ in range(n):
        g = TinyGuest("irqs", 4, (delay_ns,))
        try:
            assert g.read() == 1
            t = time.monotonic_ns()
            assert g.read() == 2
            late.append((time.monotonic_ns() - t - delay_ns) / 1e3)
        finally:
            g.close()
    late.sort()
    return late[len(late) // 2], late[-1]


def main():
    hc = per_op(0, N)
    sp = per_op(4, N)
    tr = per_op(1, N // 4)
    nt = notify_round_trip(NOTIFIES)
    bmed, bmax = break_latency()
    print("hypercall round trip: %.2f us (goal < 2 us)" % (hc * 1e6))
    print("SET_PTE round trip: %.2f us" % (sp * 1e6))
    print("trap delivery ring 3 -> handler -> iret: %.2f us (goal < 10 us)" % (tr * 1e6))
    print("NOTIFY -> read() -> read() again: %.2f us (goal < 25 us)" % (nt * 1e6))
    print("BREAK from a Waker process -> read() raises EAGAIN: median %.0f us, max %.0f us"
          % (bmed, bmax))
    cmed, cmax = clock_event_lateness()
    print("20 ms clock event -> timer interrupt, later than asked: median %.0f us, max %.0f us"
          % (cmed, cmax))


if __name__ == "__main__":
    main()
