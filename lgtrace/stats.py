"""--stats: the table printed at exit, laid out like `perf kvm stat report`'s.

    Samples     how many exits of that kind
    Time%       their share of all the time the Host held the Guest stopped
    Min/Max/Avg time per exit, from the trap to the Guest running again
    Total time  all of them

then the hypercalls by number (trap and async ring: what our Guest's lghcalls=1
counts from its side), the interrupts (raised, delivered, and the episodes of
being held back, by reason), and per virtqueue its kicks, interrupts, requests
and bytes.  Requests and bytes are buffers the device finished: a block request's
data (counted by the worker), a console or net buffer's bytes.
"""

from .host import ASYNC, EXITS, IRQS_SEEN, KIND_MASK, STATE, exit_name, hcall_name
from .names import Names
from .record import BYTES, INTERRUPTS, KICKS, NIRQ, REQUESTS, WAKES, counter

HELD = ("interrupts disabled", "blocked", "noirq window", "no handler",
        "before LGUEST_INIT")


def _us(ns):
    return "%.2fus" % (ns / 1000)


def _span(ns):
    if ns >= 10_000_000_000:
        return "%.2fs" % (ns / 1e9)
    if ns >= 10_000_000:
        return "%.2fms" % (ns / 1e6)
    return "%.2fus" % (ns / 1e3)


def report(out, run, counters, devices, t_end):
    """Print the table to out (a text stream)."""
    names = Names(devices)
    w = out.write
    first = STATE["first"]
    total_n = sum(s[0] for s in EXITS.values())
    total_t = sum(s[1] for s in EXITS.values())
    life = (t_end - first) if first is not None else 0
    w("\nlguest --stats: the Guest's exits (as `perf kvm stat report`; 1 VCPU)\n\n")
    w("%26s %10s %9s %9s %11s %11s %11s %12s\n\n" % (
        "EXIT KIND", "Samples", "Samples%", "Time%", "Min Time", "Max Time", "Avg time",
        "Total time"))
    for key, (n, t, lo, hi) in sorted(EXITS.items(), key=lambda kv: (-kv[1][0], kv[0])):
        w("%26s %10d %8.2f%% %8.2f%% %11s %11s %11s %12s\n" % (
            exit_name(key), n, 100.0 * n / total_n, 100.0 * t / total_t if total_t else 0,
            _us(lo), _us(hi), _us(t / n), _span(t)))
    w("\nTotal Samples:%d, Total events handled time:%.2fus.\n" % (total_n, total_t / 1000))
    if life:
        ran = max(life - total_t, 0)
        w("The Guest lived %s from its first instruction: it ran %s (%.1f%%), the Host "
          "held it %s.\n" % (_span(life), _span(ran), 100.0 * ran / life, _span(total_t)))

    trapped = {key: s[0] for key, s in EXITS.items() if not key & KIND_MASK}
    calls = sorted(set(trapped) | set(ASYNC))
    w("\nHypercalls (the trap \"int $0x1f\", or an entry of the async ring in "
      "lguest_data):\n\n")
    w("%26s %10s %10s %10s\n\n" % ("HYPERCALL", "Trap", "Async", "Total"))
    for call in calls:
        t, a = trapped.get(call, 0), ASYNC.get(call, 0)
        w("%26s %10d %10d %10d\n" % (hcall_name(call), t, a, t + a))
    st, sa = sum(trapped.values()), sum(ASYNC.values())
    w("%26s %10d %10d %10d\n" % ("total", st, sa, st + sa))

    w("\nInterrupts (held back: times one had to wait, by why):\n\n")
    w("%5s  %-22s %8s %10s %10s %8s %8s %10s\n\n" % (
        "IRQ", "SOURCE", "Raised", "Delivered", "disabled", "blocked", "noirq",
        "no handler"))
    for irq in sorted(IRQS_SEEN):
        d = IRQS_SEEN[irq]
        w("%5d  %-22s %8d %10d %10d %8d %8d %10d\n" % (
            irq, names.irq(irq)[:22], d.get("raised", 0), d.get("delivered", 0),
            *(d.get(why, 0) for why in HELD[:4])))

    w("\nVirtqueues:\n\n")
    w("%5s  %-22s %8s %11s %10s %14s\n\n" % ("IRQ", "DEVICE QUEUE", "Kicks", "Interrupts",
                                            "Requests", "Bytes"))
    irqs = [irq for irq, _, _ in names.order] or [
        i for i in range(1, NIRQ) if any(counters[counter(i, k)] for k in range(4))]
    for irq in irqs:
        if irq >= NIRQ:
            continue
        c = [counters[counter(irq, k)] for k in (KICKS, INTERRUPTS, REQUESTS, BYTES)]
        w("%5d  %-22s %8d %11d %10d %14d\n" % (irq, names.irq(irq)[:22], *c))
    w("\nWaker: %d wake-ups, each a BREAK; the helper thread got %d, the run loop "
      "took %d.\n\n" % (counters[WAKES], STATE["breaks"], STATE["breaks_taken"]))
