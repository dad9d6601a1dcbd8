"""The Host's events: exits, hypercalls, interrupts, the clock, the helper thread.

An *exit* is the Guest stopping and the Host taking over, the way `perf kvm
stat` counts VM exits: from the moment the trap hook is entered (or unicorn
returns for a stop request) until the Guest runs again, either in the same
emu_start() when the hook returns, or at the next emu_start() (run_once()
calls entering()).  So a HALT's exit lasts as long as the Guest sleeps, and a
NOTIFY's includes the Launcher's handling of it.  Kinds are keyed by int:

    call                  a hypercall trap, LHCALL_<call>
    TRAP | vector         a fault the Guest took (#PF, #GP, #NM...)
    INT | vector          a software "int n" (system calls come here: unicorn has
                          no IDT to send them straight to the Guest)
    STOP | code           unicorn stopped for the helper thread (EVENT, then
                          refined to what run_guest() took: TIMER, BREAK, ...),
                          or on a memory fault, triple fault, Host error

On the trace, exits are B/E spans on the "Guest vCPU 0" track; the async
ring's entries, interrupts and events taken are instants inside them.
"""

import lgtrace
from host.abi import (GUEST_PL, LD_IRQ_ENABLED, LGUEST_IRQS, LGUEST_TRAP_ENTRY,
                      LHCALL_NOTIFY, X86_EFLAGS_IF)
from host.channel import BREAK, FOREIGN_WRITE, INPUT, IRQS, RECHECK_TICK, TIMER, WAKER_GONE

from . import record
from .record import VCPU_TID, now

TRAP = 1 << 32
INT = 2 << 32
STOP = 3 << 32
KIND_MASK = 3 << 32

# Stop codes, in the order taken() prefers them when several events come at once.
STOP_EVENT, STOP_BREAK, STOP_IRQS, STOP_TIMER, STOP_FOREIGN, STOP_RECHECK, \
    STOP_WAKER_GONE, STOP_MEMORY_FAULT, STOP_TRIPLE_FAULT, STOP_HOST_ERROR = range(10)
STOP_NAMES = {
    STOP_EVENT: "EVENT (nothing new)", STOP_BREAK: "EVENT: BREAK",
    STOP_IRQS: "EVENT: LHREQ_IRQ", STOP_TIMER: "EVENT: TIMER",
    STOP_FOREIGN: "EVENT: FOREIGN_WRITE", STOP_RECHECK: "EVENT: RECHECK_TICK",
    STOP_WAKER_GONE: "EVENT: WAKER_GONE", STOP_MEMORY_FAULT: "MEMORY_FAULT",
    STOP_TRIPLE_FAULT: "TRIPLE_FAULT", STOP_HOST_ERROR: "HOST_ERROR",
}
_EVENT_CODES = ((BREAK, STOP_BREAK), (IRQS, STOP_IRQS), (TIMER, STOP_TIMER),
                (FOREIGN_WRITE, STOP_FOREIGN), (RECHECK_TICK, STOP_RECHECK),
                (WAKER_GONE, STOP_WAKER_GONE))
EVENT_BITS = ((TIMER, "TIMER"), (BREAK, "BREAK"), (WAKER_GONE, "WAKER_GONE"),
              (RECHECK_TICK, "RECHECK_TICK"), (IRQS, "IRQS"),
              (FOREIGN_WRITE, "FOREIGN_WRITE"), (INPUT, "INPUT"))

# --- names -----------------------------------------------------------------------------
#: LHCALL_* by number, with the names of their arguments (asm/lguest_hcall.h, 3.16).
HCALLS = {
    0: ("LHCALL_FLUSH_ASYNC", ()),
    1: ("LHCALL_LGUEST_INIT", ("lguest_data",)),
    2: ("LHCALL_SHUTDOWN", ("message", "reason")),
    4: ("LHCALL_NEW_PGTABLE", ("pgdir",)),
    5: ("LHCALL_FLUSH_TLB", ("all",)),
    6: ("LHCALL_LOAD_IDT_ENTRY", ("vector", "lo", "hi")),
    7: ("LHCALL_SET_STACK", ("ss", "esp", "pages")),
    8: ("LHCALL_TS", ("ts",)),
    9: ("LHCALL_SET_CLOCKEVENT", ("delta_ns",)),
    10: ("LHCALL_HALT", ()),
    13: ("LHCALL_SET_PMD", ("pmd_page", "index")),
    14: ("LHCALL_SET_PTE", ("pgdir", "vaddr", "pte", "pte_high")),
    15: ("LHCALL_SET_PGD", ("pgdir", "index")),
    16: ("LHCALL_LOAD_TLS", ("tls",)),
    17: ("LHCALL_NOTIFY", ("address",)),
    18: ("LHCALL_LOAD_GDT_ENTRY", ("index", "lo", "hi")),
    19: ("LHCALL_SEND_INTERRUPTS", ()),
}
TRAP_NAMES = {0: "#DE", 1: "#DB", 3: "#BP", 4: "#OF", 5: "#BR", 6: "#UD", 7: "#NM",
              8: "#DF", 10: "#TS", 11: "#NP", 12: "#SS", 13: "#GP", 14: "#PF",
              16: "#MF", 17: "#AC", 19: "#XM"}


def hcall_name(call):
    return HCALLS[call][0] if call in HCALLS else "LHCALL %d (bad)" % call


def hcall_args(call, args):
    """{name: value} for a hypercall's arguments (hex, but numbers stay numbers)."""
    names = HCALLS[call][1] if call in HCALLS else ("arg1", "arg2", "arg3", "arg4")
    out = {}
    for name, val in zip(names, args[1:]):
        out[name] = val if name in ("delta_ns", "vector", "index", "pages", "ts", "all",
                                    "reason") else "%#x" % val
    if call == 14 and args[4] == 0:
        out.pop("pte_high", None)     # non-PAE: a 32-bit pte
    return out


def exit_name(key):
    kind, low = key & KIND_MASK, key & 0xFFFFFFFF
    if kind == 0:
        return hcall_name(low)
    if kind == TRAP:
        return "trap %d %s" % (low, TRAP_NAMES.get(low, "")) if low in TRAP_NAMES \
            else "trap %d" % low
    if kind == INT:
        return "int %#x" % low
    return STOP_NAMES.get(low, "stop %d" % low)


# --- what the Launcher process accumulates ----------------------------------------------
#: exit key -> [count, total ns, min ns, max ns]
EXITS = {}
#: hypercall number -> entries run from the async ring
ASYNC = {}
#: irq -> {"raised": n, "delivered": n, <why held back>: episodes}
IRQS_SEEN = {}
STATE = {"open": None, "open_event": None, "in_guest": False, "first": None,
         "next_id": 0, "breaks": 0, "breaks_taken": 0, "held": {}, "causes": {}, "pending": {}}


def _account(key, dt):
    s = EXITS.get(key)
    if s is None:
        EXITS[key] = [1, dt, dt, dt]
    else:
        s[0] += 1
        s[1] += dt
        if dt < s[2]:
            s[2] = dt
        elif dt > s[3]:
            s[3] = dt


def _irq_count(irq, what):
    d = IRQS_SEEN.get(irq)
    if d is None:
        d = IRQS_SEEN[irq] = {}
    d[what] = d.get(what, 0) + 1


def _new_id():
    STATE["next_id"] += 1
    return STATE["next_id"]


# --- the trap hook ------------------------------------------------------------------------
def trap_hook(cpu, hook):
    """The Guest's UC_HOOK_INTR hook with the exit around it: what x86_core.install_hooks()
    installs instead of `hook` when lgtrace.on.  Notes the exit's kind and arguments
    before the hook handles it (registers change as it does), then ends the exit if the
    Guest runs on, or leaves it open for entering()."""
    ui = cpu.ui
    events = record.EVENTS
    state = STATE
    exits = EXITS

    def traced(intno):
        t0 = now()
        if intno == LGUEST_TRAP_ENTRY and (ui.cs & 3) == GUEST_PL:
            if events is None:
                key = ui.eax
            else:
                args = ui.hcall_args()
                key = args[0]
                # A NOTIFY may be an early console string: keep its first bytes.
                text = (bytes(cpu.mem[args[1]:min(args[1] + 80, cpu.mem_limit)])
                        if key == LHCALL_NOTIFY else None)
                events.append(("hcall", t0, args, ui.eip, text))
        elif ui.exception_is_int():
            key = INT | intno
            if events is not None:
                events.append(("int", t0, intno, ui.eip))
        else:
            key = TRAP | intno
            if events is not None:
                events.append(("trap", t0, intno, ui.eip, ui.error_code(),
                               ui.cr2 if intno == 14 else None))
        hook(intno)
        if cpu.exit is None:          # it runs on in this emu_start(): _account(), inline
            t1 = now()
            dt = t1 - t0
            s = exits.get(key)
            if s is None:
                exits[key] = [1, dt, dt, dt]
            else:
                s[0] += 1
                s[1] += dt
                if dt < s[2]:
                    s[2] = dt
                elif dt > s[3]:
                    s[3] = dt
            if events is not None:
                events.append(("end", t1))
        else:
            state["open"] = (key, t0)
            state["open_event"] = None
            state["in_guest"] = False
    return traced


def entering(cpu):
    """run_once(), just before emu_start(): the exit in progress ends."""
    t = now()
    state = STATE
    if state["first"] is None:
        state["first"] = t
    if state["open"] is not None:
        key, t0 = state["open"]
        state["open"] = None
        _account(key, t - t0)
        if record.EVENTS is not None:
            record.EVENTS.append(("end", t))
    state["in_guest"] = True


def stopped(cpu, why):
    """handle_exit(): emu_start() came back without a hook saying why (a stop request,
    a memory or triple fault, a Host error): that too is an exit."""
    from host.x86_core import Exit
    state = STATE
    if not state["in_guest"]:
        return                        # a hook's exit, already open; or no run at all
    state["in_guest"] = False
    code = {Exit.MEMORY_FAULT: STOP_MEMORY_FAULT, Exit.TRIPLE_FAULT: STOP_TRIPLE_FAULT,
            Exit.HOST_ERROR: STOP_HOST_ERROR}.get(why, STOP_EVENT)
    t = now()
    ev = ["stop", t, STOP | code, cpu.ui.eip]
    state["open"] = (STOP | code, t)
    state["open_event"] = ev
    if record.EVENTS is not None:
        record.EVENTS.append(ev)


def close_open_exit(t):
    """At the end: the exit still open (the Guest's last one: SHUTDOWN, a death)."""
    if STATE["open"] is not None:
        key, t0 = STATE["open"]
        STATE["open"] = None
        _account(key, t - t0)


def taken(cpu, bits):
    """Step 3 of run_guest(): the events it took.  A stop for events gets its name
    from them; TIMER is the clock event firing (IRQ 0 pending)."""
    if not bits:
        return
    state = STATE
    if state["open"] is not None and state["open"][0] == STOP | STOP_EVENT:
        for bit, code in _EVENT_CODES:
            if bits & bit:
                state["open"] = (STOP | code, state["open"][1])
                if state["open_event"] is not None:
                    state["open_event"][2] = STOP | code
                break
    if bits & TIMER:
        _irq_count(0, "raised")
    if bits & BREAK:
        state["breaks_taken"] += 1
    if record.EVENTS is not None:
        cause = None
        if bits & TIMER:
            cause = _new_id()
            state["causes"].setdefault(0, []).append(cause)
        record.EVENTS.append(("taken", now(), bits, cause))


def async_hcall(cpu, slot, args):
    """do_async_hcalls(): one entry of the async ring, about to run."""
    ASYNC[args[0]] = ASYNC.get(args[0], 0) + 1
    if record.EVENTS is not None:
        record.EVENTS.append(("async", now(), slot, args))


def interrupt(cpu, irq):
    """deliver_interrupts(), after trying irq (LGUEST_IRQS: every pending one is blocked):
    delivered, or why not.  A reason is noted once per episode, not at every try."""
    pending = cpu.irqs_pending
    if irq >= LGUEST_IRQS:
        irq = (pending & -pending).bit_length() - 1
        why = "blocked" if cpu.lguest_data is not None else "before LGUEST_INIT"
    elif not pending >> irq & 1:
        why = None
    elif cpu.noirq_start <= cpu.ui.eip < cpu.noirq_end:
        why = "noirq window"
    elif not cpu.u32_at(cpu.lguest_data + LD_IRQ_ENABLED) & X86_EFLAGS_IF:
        why = "interrupts disabled"
    else:
        why = "no handler"
    held = STATE["held"]
    if why is None:
        held.pop(irq, None)
        _irq_count(irq, "delivered")
        if record.EVENTS is not None:
            causes = STATE["causes"].pop(irq, ())
            record.EVENTS.append(("irq", now(), irq, None, tuple(causes)))
    elif held.get(irq) != why:
        held[irq] = why
        _irq_count(irq, why)
        if record.EVENTS is not None:
            record.EVENTS.append(("irq", now(), irq, why, ()))


def raised(bits):
    """Events.raise_(), on whichever thread raised them (the helper thread mostly)."""
    seq = 0
    if bits & BREAK:
        STATE["breaks"] += 1
        seq = STATE["breaks"]
    if record.EVENTS is not None:
        record.EVENTS.append(("raised", now(), record.thread_tid(), bits, seq))


def read(guest):
    """LguestDev.read(): run_guest() inside a "read /dev/lguest" span on the Launcher's
    track; the span says what came back."""
    events = record.EVENTS
    if events is None:
        return guest.run_guest()
    tid = record.thread_tid()
    events.append(("read", now(), tid))
    result = None
    try:
        result = guest.run_guest()
        return result
    except BlockingIOError:
        result = "EAGAIN INPUT" if guest.break_input else "EAGAIN"
        raise
    except BaseException as e:
        result = "%s: %s" % (type(e).__name__, getattr(e, "reason", e))
        raise
    finally:
        events.append(("read_end", now(), tid, result))


def lhreq_irq(irq):
    """LguestDev.write((LHREQ_IRQ, irq)): the Launcher interrupts the Guest."""
    if 0 <= irq < record.NIRQ:
        record.COUNTERS[record.counter(irq, record.INTERRUPTS)] += 1
    _irq_count(irq, "raised")
    if record.EVENTS is not None:
        rid = _new_id()
        STATE["causes"].setdefault(irq, []).append(rid)
        reqs = tuple(STATE["pending"].pop(irq, ()))
        record.EVENTS.append(("lhreq_irq", now(), record.thread_tid(), irq, rid, reqs))


def lhreq_break():
    """LguestDev.write((LHREQ_BREAK, 0)): the Launcher releases the Waker."""
    if record.EVENTS is not None:
        record.EVENTS.append(("break0", now(), record.thread_tid()))
