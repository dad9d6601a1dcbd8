"""Unit tests for devices/virtqueue.py: get_vq_desc() and friends against
vrings laid out in real Guest memory from Python, as a Guest driver would.

No Host, no unicorn: a GuestMemory and a fake lg that records what the
Launcher writes to "/dev/lguest".  GuestRing (conftest) is a tiny Guest-side
virtqueue driver (vq_add_buf / vq_get_buf in our guest's virtio.c, or
virtqueue_add in Linux).
"""
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devices.abi import (PAGE_SIZE, VIRTQUEUE_NUM, VRING_AVAIL_F_NO_INTERRUPT,
                         VRING_DESC, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
                         VRING_USED_F_NO_NOTIFY, vring_offsets, vring_size)
from devices.errors import LauncherError
from devices.memory import GuestMemory
from devices.virtqueue import LHREQ_IRQ, Virtqueue

from conftest import FakeLg, GuestRing


MEM = 1 << 20


def make_vq(num=VIRTQUEUE_NUM, handler=lambda lg, vq: None, mem_bytes=MEM):
    mem = GuestMemory(mem_bytes)
    pages = (vring_size(num) + PAGE_SIZE - 1) // PAGE_SIZE
    addr = mem.get_pages(pages)
    vq = Virtqueue(mem, num, 3, addr // PAGE_SIZE, handler)
    return mem, vq, GuestRing(mem, vq)


def dies(fn, msg):
    with pytest.raises(LauncherError) as e:
        fn()
    assert str(e.value) == msg
    assert e.value.status == 1


# --- the ordinary cases -------------------------------------------------

def test_empty_ring_gives_none():
    mem, vq, ring = make_vq()
    assert vq.get_vq_desc() is None
    assert vq.last_avail_idx == 0


def test_chain_out_then_in():
    mem, vq, ring = make_vq()
    a = ring.alloc(16, b"H" * 16)
    b = ring.alloc(100, bytes(range(100)))
    c = ring.alloc(512)
    d = ring.alloc(1)
    head = ring.add([(a, 16), (b, 100)], [(c, 512), (d, 1)])
    head2, iov, out_num, in_num = vq.get_vq_desc()
    assert (head2, out_num, in_num) == (head, 2, 2)
    assert [len(v) for v in iov] == [16, 100, 512, 1]
    assert bytes(iov[1]) == bytes(range(100))
    # The iov is Guest memory itself, not a copy.
    iov[2][:3] = b"xyz"
    assert bytes(mem.view[c:c + 3]) == b"xyz"
    assert vq.last_addrs == [(a, 16), (b, 100), (c, 512), (d, 1)]
    assert vq.get_vq_desc() is None


def test_several_requests_in_order_and_used_ring():
    mem, vq, ring = make_vq()
    lg = FakeLg()
    heads = [ring.add([(ring.alloc(8), 8)], []) for _ in range(5)]
    got = []
    while (r := vq.get_vq_desc()) is not None:
        got.append(r[0])
        vq.add_used_and_trigger(lg, r[0], 8 * len(got))
    assert got == heads
    assert ring.get_used() == [(h, 8 * (k + 1)) for k, h in enumerate(heads)]
    assert lg.irqs() == [3] * 5


def test_indices_wrap_at_65536():
    mem, vq, ring = make_vq(num=8)
    vq.last_avail_idx = 65534
    ring.set_avail_idx(65534)
    struct.pack_into("<H", mem.view, ring.used + 2, 65535)
    h1 = ring.add([(0x2000, 4)], [])
    h2 = ring.add([(0x3000, 4)], [])
    assert ring.avail_idx() == 0
    assert vq.get_vq_desc()[0] == h1
    vq.add_used(h1, 4)
    assert vq.get_vq_desc()[0] == h2
    vq.add_used(h2, 4)
    assert vq.last_avail_idx == 0
    assert ring.used_idx() == 1
    assert vq.get_vq_desc() is None


def test_buffer_ending_exactly_at_guest_limit_is_fine():
    mem, vq, ring = make_vq()
    ring.add([(mem.guest_limit - 10, 10)], [])
    head, iov, o, i = vq.get_vq_desc()
    assert len(iov[0]) == 10


def test_zero_length_buffer_is_fine():
    mem, vq, ring = make_vq()
    ring.add([(0x1000, 0)], [(0x2000, 1)])
    assert vq.get_vq_desc()[2:] == (1, 1)


def test_trigger_irq_honours_no_interrupt():
    mem, vq, ring = make_vq()
    lg = FakeLg()
    ring.set_avail_flags(VRING_AVAIL_F_NO_INTERRUPT)
    vq.add_used_and_trigger(lg, 0, 0)
    assert lg.writes == []
    assert ring.used_idx() == 1
    ring.set_avail_flags(0)
    vq.trigger_irq(lg)
    assert lg.writes == [(LHREQ_IRQ, 3)]


def test_no_handler_means_no_notify():
    mem, vq, ring = make_vq(handler=None)
    assert ring.used_flags() == VRING_USED_F_NO_NOTIFY
    mem2, vq2, ring2 = make_vq()
    assert ring2.used_flags() == 0


def test_reset_forgets_position():
    mem, vq, ring = make_vq()
    ring.add([(0x1000, 4)], [])
    vq.get_vq_desc()
    vq.reset()
    assert vq.last_avail_idx == 0


# --- every death in get_vq_desc, with the C's words ---------------------

def test_guest_moved_index_too_far():
    mem, vq, ring = make_vq()
    ring.set_avail_idx(VIRTQUEUE_NUM + 1)
    dies(vq.get_vq_desc, "Guest moved used index from 0 to 129")


def test_exactly_num_outstanding_is_allowed():
    mem, vq, ring = make_vq(num=8)
    for k in range(8):
        ring.set_desc(k, 0x1000, 4, 0, 0)
        ring.offer(k)
    assert [vq.get_vq_desc()[0] for _ in range(8)] == list(range(8))


def test_guest_moved_index_backwards():
    mem, vq, ring = make_vq()
    vq.last_avail_idx = 10
    ring.set_avail_idx(9)
    dies(vq.get_vq_desc, "Guest moved used index from 10 to 9")


def test_head_out_of_range():
    mem, vq, ring = make_vq()
    ring.offer(VIRTQUEUE_NUM)
    dies(vq.get_vq_desc, "Guest says index 128 is available")


def test_desc_next_out_of_range():
    mem, vq, ring = make_vq()
    ring.set_desc(0, 0x1000, 4, VRING_DESC_F_NEXT, 200)
    ring.offer(0)
    dies(vq.get_vq_desc, "Desc next is 200")


def test_looped_descriptor():
    mem, vq, ring = make_vq(num=4)
    ring.set_desc(0, 0x1000, 4, VRING_DESC_F_NEXT, 1)
    ring.set_desc(1, 0x1000, 4, VRING_DESC_F_NEXT, 0)
    ring.offer(0)
    dies(vq.get_vq_desc, "Looped descriptor")


def test_self_loop():
    mem, vq, ring = make_vq()
    ring.set_desc(5, 0x1000, 4, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 5)
    ring.offer(5)
    dies(vq.get_vq_desc, "Looped descriptor")


def test_chain_of_exactly_num_is_not_a_loop():
    mem, vq, ring = make_vq(num=4)
    for k in range(4):
        ring.set_desc(k, 0x1000, 4, VRING_DESC_F_NEXT if k < 3 else 0, k + 1)
    ring.offer(0)
    assert vq.get_vq_desc()[2] == 4


def test_out_after_in():
    mem, vq, ring = make_vq()
    ring.set_desc(0, 0x1000, 4, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 1)
    ring.set_desc(1, 0x2000, 4, 0, 0)
    ring.offer(0)
    dies(vq.get_vq_desc, "Descriptor has out after in")


@pytest.mark.parametrize("addr,length,shown", [
    ("limit", 1, None),                        # starts at guest_limit
    ("limit", 0, None),                        # even with no length
    ("limit-1", 2, None),                      # ends one past it
    (0x1000, 0xFFFFFFFF, "0x1000"),            # length past the end
    (0xFFFFFFFF, 2, "0xffffffff"),             # wraps 32 bits in C
    ((1 << 64) - 1, 1, "0xffffffffffffffff"),  # a u64 address
    (0, 0xFFFFFFFF, "0"),                      # C prints %#lx of 0 as "0"
])
def test_invalid_addresses(addr, length, shown):
    mem, vq, ring = make_vq()
    if addr == "limit":
        addr = mem.guest_limit
    elif addr == "limit-1":
        addr = mem.guest_limit - 1
    if shown is None:
        shown = "%#x" % addr
    ring.set_desc(0, addr, length, 0, 0)
    ring.offer(0)
    dies(vq.get_vq_desc, "Invalid address %s" % shown)


def test_invalid_address_later_in_chain():
    mem, vq, ring = make_vq()
    ring.set_desc(0, 0x1000, 4, VRING_DESC_F_NEXT, 1)
    ring.set_desc(1, mem.guest_limit - 2, 4, VRING_DESC_F_WRITE, 0)
    ring.offer(0)
    dies(vq.get_vq_desc, "Invalid address %#x" % (mem.guest_limit - 2))


def test_vring_memory_itself_is_guest_memory():
    # The vring pages are above RAM but below guest_limit: the Guest may
    # legitimately point buffers there (it's silly, not an attack).
    mem, vq, ring = make_vq()
    ring.add([(vq.pfn * PAGE_SIZE, 16)], [])
    assert len(vq.get_vq_desc()[1][0]) == 16


# --- property: random ring contents --------------------------------------

PROP_NUM = 8
PROP_MEM = 64 * 1024
EXAMPLES = 1500
_examples_run = [0]
_outcomes = {}

# Mostly plausible values, so chains get long enough to reach every check,
# with the absurd mixed in (one draw in six or so).
def _mostly(plausible, absurd, weight=5):
    # sampled_from keeps duplicates, so this really is weight : 1.
    return st.sampled_from([True] * weight + [False]).flatmap(
        lambda ok: plausible if ok else absurd)


_addr = _mostly(st.integers(0, PROP_MEM - 4096),
                st.one_of(st.integers(PROP_MEM, PROP_MEM + 256 * PAGE_SIZE + 16),
                          st.integers(0, (1 << 64) - 1),
                          st.sampled_from([0, 0xFFFFFFFF, (1 << 32), (1 << 64) - 1])))
_len = _mostly(st.integers(0, 4096), st.integers(0, (1 << 32) - 1))
_flags = _mostly(st.sampled_from([0, 1, 2, 3]), st.integers(0, 0xFFFF), weight=4)
_next = _mostly(st.integers(0, PROP_NUM - 1), st.integers(0, 0xFFFF), weight=4)
_desc = st.tuples(_addr, _len, _flags, _next)
_head = _mostly(st.integers(0, PROP_NUM - 1), st.integers(0, 0xFFFF))
_delta = _mostly(st.integers(0, PROP_NUM), st.integers(0, 0xFFFF))

KNOWN = ("Guest moved used index from ", "Guest says index ", "Desc next is ",
         "Looped descriptor", "Descriptor has out after in", "Invalid address ")


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(descs=st.lists(_desc, min_size=PROP_NUM, max_size=PROP_NUM),
       avail_ring=st.lists(_head, min_size=PROP_NUM, max_size=PROP_NUM),
       delta=_delta, last=st.integers(0, 0xFFFF))
def test_property_random_rings(descs, avail_ring, delta, last):
    """Whatever the Guest puts in the ring, get_vq_desc gives a valid chain
    inside Guest memory, None, or one of the C's clean deaths: never any
    other exception, never a loop."""
    _examples_run[0] += 1
    avail_idx = (last + delta) & 0xFFFF
    mem, vq, ring = make_vq(num=PROP_NUM, mem_bytes=PROP_MEM)
    for i, (a, l, f, n) in enumerate(descs):
        ring.set_desc(i, a, l, f, n)
    for i, h in enumerate(avail_ring):
        struct.pack_into("<H", mem.view, ring.avail + 4 + 2 * i, h)
    ring.set_avail_idx(avail_idx)
    vq.last_avail_idx = last
    for _ in range(PROP_NUM + 2):
        try:
            got = vq.get_vq_desc()
        except LauncherError as e:
            assert str(e).startswith(KNOWN), str(e)
            assert e.status == 1
            kind = [k for k in KNOWN if str(e).startswith(k)][0]
            _outcomes[kind] = _outcomes.get(kind, 0) + 1
            return
        if got is None:
            assert avail_idx == vq.last_avail_idx
            _outcomes["none"] = _outcomes.get("none", 0) + 1
            return
        head, iov, out_num, in_num = got
        assert 0 <= head < PROP_NUM
        assert 1 <= out_num + in_num <= PROP_NUM
        assert len(iov) == out_num + in_num == len(vq.last_addrs)
        for v, (a, l) in zip(iov, vq.last_addrs):
            assert len(v) == l
            assert 0 <= a and a + l <= mem.guest_limit
            assert a < mem.guest_limit
        _outcomes["chain"] = _outcomes.get("chain", 0) + 1
        # Flags agree with out/in counts.
        i = head
        for k in range(out_num + in_num):
            a, l, f, n = descs[i]
            assert bool(f & VRING_DESC_F_WRITE) == (k >= out_num)
            i = n


def test_property_example_count():
    """The property test above really ran its examples (run it first)."""
    if _examples_run[0] == 0:
        test_property_random_rings()
    print("get_vq_desc property examples:", _examples_run[0], _outcomes)
    assert _examples_run[0] >= EXAMPLES * 0.9
    # Every outcome really happened: valid chains, empty rings, each death.
    assert set(_outcomes) == set(KNOWN) | {"chain", "none"}, _outcomes


def _watch_used_idx(ring, write, *, moves_wanted=5000, stop_when_backwards=False,
                    limit=10.0):
    """Run write(n) for n = 0, 1, 2... (the n-th write makes used->idx n + 1) in
    this process while a forked "Guest" spins reading used->idx, until it has seen
    the index move moves_wanted times (or go backwards, if told), or limit
    seconds.  Returns (writes, moves seen, backward moves seen).

    Both start together; on an idle machine they run side by side and this takes
    a fraction of a second, on a loaded one they take turns and it takes longer.
    The writer never gets more than 16384 ahead of what the watcher last saw, so
    a jump forwards can't pass for a step back (the index is 16 bits)."""
    import mmap
    import os
    import time
    shared = mmap.mmap(-1, 8, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
    flags = memoryview(shared).cast("H")       # [0]: done, [1]: last index seen
    go_r, go_w = os.pipe()
    res_r, res_w = os.pipe()
    pid = os.fork()
    if pid == 0:                       # the "Guest": watch used->idx
        try:
            os.read(go_r, 1)
            moves = backwards = 0
            last = ring.used_idx()
            end = time.monotonic() + limit
            while moves < moves_wanted and time.monotonic() < end:
                x = ring.used_idx()
                if x != last:
                    moves += 1
                    if (x - last) & 0xFFFF >= 0x8000:
                        backwards += 1
                        if stop_when_backwards:
                            break
                    last = flags[1] = x
            flags[0] = 1
            os.write(res_w, b"%d %d" % (moves, backwards))
        finally:
            os._exit(0)
    os.write(go_w, b"g")
    n = 0
    end = time.monotonic() + limit + 5
    while not flags[0] and time.monotonic() < end:
        if (n + 1 - flags[1]) & 0xFFFF > 16384:
            time.sleep(0)              # let the watcher catch up
            continue
        write(n)
        n += 1
    os.waitpid(pid, 0)
    moves, backwards = map(int, os.read(res_r, 100).split())
    for fd in (go_r, go_w, res_r, res_w):
        os.close(fd)
    flags.release()
    shared.close()
    return n, moves, backwards


def test_used_index_never_seen_going_backwards():
    """The block worker moves used->idx while the Guest reads it: another
    process watching the index must only ever see it go forwards."""
    mem, vq, ring = make_vq(num=8)
    n, moves, backwards = _watch_used_idx(ring, lambda n: vq.add_used(n % 8, 1))
    assert moves >= 1000, (n, moves)   # the two really ran side by side
    assert backwards == 0, (n, moves, backwards)


def test_the_watcher_does_see_a_torn_used_index():
    """The watcher above can fail: an index stored a byte at a time (low byte
    first, a pause between) is caught going backwards at a 256th step."""
    import time
    mem, vq, ring = make_vq(num=8)
    at = ring.used + 2

    def torn(n):
        idx = (n + 1) & 0xFFFF
        mem.view[at] = idx & 0xFF
        if idx & 0xFF == 0:
            time.sleep(0.001)          # 0x01ff -> 0x0100 for a moment
        mem.view[at + 1] = idx >> 8
    n, moves, backwards = _watch_used_idx(ring, torn, stop_when_backwards=True)
    assert backwards > 0, (n, moves)
