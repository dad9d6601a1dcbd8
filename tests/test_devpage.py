"""Unit tests for devices/devpage.py: the device page exactly as the Guest's
lguest_device.c (seed 003) reads it, and the NOTIFY / input dispatch.

parse_device_page() (conftest) is an independent reading of the page, written
from the Guest's side, not from devpage.py's code.
"""
import os
import struct

import pytest

from devices.abi import (PAGE_SIZE, VIRTIO_CONFIG_S_ACKNOWLEDGE,
                         VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
                         VIRTIO_CONFIG_S_FAILED, VIRTIO_ID_BLOCK,
                         VIRTIO_ID_CONSOLE, VIRTIO_ID_NET, vring_size)
from devices.devpage import DeviceList
from devices.errors import LauncherError
from devices.memory import GuestMemory
from conftest import FakeLg, GuestRing, page_of, parse_device_page

MEM = 1 << 20


def nothing(lg, vq):
    pass


def test_device_page_sits_at_top_of_ram():
    mem = GuestMemory(MEM)
    devices = DeviceList(mem)
    assert devices.descpage == MEM
    assert parse_device_page(page_of(devices)) == []


def test_three_devices_as_the_guest_reads_them():
    mem = GuestMemory(MEM)
    devices = DeviceList(mem)
    con = devices.new_device("console", VIRTIO_ID_CONSOLE, 0, lambda lg, d: True)
    con.add_virtqueue(128, devices.enable_fd)
    con.add_virtqueue(128, nothing)
    blk = devices.new_device("block", VIRTIO_ID_BLOCK, 5, None)
    blk.add_virtqueue(128, nothing)
    blk.add_feature(2)
    blk.add_feature(9)
    blk.set_config(struct.pack("<QII", 32768, 0, 126))
    net = devices.new_device("net", VIRTIO_ID_NET, 7, None)
    net.add_virtqueue(128, None)
    net.add_virtqueue(128, nothing)
    net.add_feature(5)
    net.set_config(bytes([0, 0x16, 0x3e, 1, 2, 3]))
    # Adding to an earlier device after later ones must move them along.
    con.add_feature(0)

    parsed = parse_device_page(page_of(devices))
    assert [d["type"] for d in parsed] == [3, 2, 1]
    assert [d["status"] for d in parsed] == [0, 0, 0]

    vring_pages = (vring_size(128) + PAGE_SIZE - 1) // PAGE_SIZE
    first_pfn = (MEM + PAGE_SIZE) // PAGE_SIZE
    assert parsed[0]["vqs"] == [(128, 1, first_pfn), (128, 2, first_pfn + vring_pages)]
    assert parsed[1]["vqs"] == [(128, 3, first_pfn + 2 * vring_pages)]
    assert parsed[2]["vqs"] == [(128, 4, first_pfn + 3 * vring_pages),
                                (128, 5, first_pfn + 4 * vring_pages)]
    assert parsed[0]["features"] == 1 and parsed[0]["feature_len"] == 1
    assert parsed[1]["features"] == (1 << 2) | (1 << 9)
    assert parsed[1]["feature_len"] == 2          # just enough for bit 9
    assert parsed[1]["host_feat"] == bytes([0x04, 0x02])
    assert parsed[1]["guest_feat"] == bytes(2)
    assert parsed[1]["config"] == struct.pack("<QII", 32768, 0, 126)
    assert parsed[2]["features"] == 1 << 5
    assert parsed[2]["config"] == bytes([0, 0x16, 0x3e, 1, 2, 3])
    # Byte for byte: descriptors packed one after the other from offset 0.
    assert [d["offset"] for d in parsed] == [0, 5 + 16 + 2, 23 + 5 + 8 + 4 + 16]
    assert [dev.desc_addr for dev in devices.devs] == [MEM + d["offset"] for d in parsed]
    raw = bytes(page_of(devices))
    assert raw[:23] == bytes([3, 2, 1, 0, 0]) + struct.pack(
        "<HHIHHI", 128, 1, first_pfn, 128, 2, first_pfn + vring_pages) + b"\x01\x00"
    end = parsed[2]["offset"] + 5 + 16 + 2 + 6
    assert raw[end:] == bytes(PAGE_SIZE - end)
    # The vrings fit below guest_limit, where the Guest may reach.
    assert mem.guest_limit == MEM + PAGE_SIZE + 5 * vring_pages * PAGE_SIZE
    # A queue without a handler asks not to be kicked.
    assert GuestRing(mem, net.vqs[0]).used_flags() == 1


def test_no_features_means_feature_len_zero():
    devices = DeviceList(GuestMemory(MEM))
    d = devices.new_device("x", 9, -1, None)
    d.add_feature(7)
    assert parse_device_page(page_of(devices))[0]["feature_len"] == 1
    devices2 = DeviceList(GuestMemory(MEM))
    devices2.new_device("y", 9, -1, None)
    assert parse_device_page(page_of(devices2))[0]["feature_len"] == 0


def test_too_many_devices():
    devices = DeviceList(GuestMemory(MEM))
    # 4096 / (5 + 250) = 16 devices fit, the 17th does not.
    for k in range(16):
        devices.new_device("d%d" % k, 9, -1, None).set_config(bytes(250))
    assert len(parse_device_page(page_of(devices))) == 16
    with pytest.raises(LauncherError) as e:
        devices.new_device("last", 9, -1, None).set_config(bytes(250))
    assert str(e.value) == "Too many devices"


def test_not_enough_memory_for_devices():
    devices = DeviceList(GuestMemory(MEM))
    d = devices.new_device("greedy", 9, -1, None)
    with pytest.raises(LauncherError) as e:
        for _ in range(200):
            d.add_virtqueue(128, None)
    assert str(e.value) == "Not enough memory for devices"


# --- NOTIFY ---------------------------------------------------------------

def make_console_and_block():
    mem = GuestMemory(MEM)
    devices = DeviceList(mem, verbose=True)
    kicks = []
    con = devices.new_device("console", VIRTIO_ID_CONSOLE, -1, None)
    con.add_virtqueue(128, None)
    con.add_virtqueue(128, lambda lg, vq: kicks.append(("con", vq)))
    blk = devices.new_device("block", VIRTIO_ID_BLOCK, -1, None)
    blk.add_virtqueue(128, lambda lg, vq: kicks.append(("blk", vq)))
    blk.add_feature(2)
    blk.add_feature(9)
    return mem, devices, con, blk, kicks


def test_kick_goes_to_its_queue(capsys):
    mem, devices, con, blk, kicks = make_console_and_block()
    lg = FakeLg()
    devices.handle_output(lg, blk.vqs[0].pfn << 12)
    devices.handle_output(lg, con.vqs[1].pfn << 12)
    # A queue with no handler: nothing happens, nothing is printed.
    devices.handle_output(lg, con.vqs[0].pfn << 12)
    assert kicks == [("blk", blk.vqs[0]), ("con", con.vqs[1])]
    assert capsys.readouterr().out == "Output to block\nOutput to console\n"


def set_status(mem, dev, status):
    mem.view[dev.desc_addr + 4] = status


def test_status_ok_then_reset(capsys):
    mem, devices, con, blk, kicks = make_console_and_block()
    lg = FakeLg()
    resets = []
    blk.on_reset = lambda lg, dev: resets.append(dev)
    # The Guest accepts FLUSH only (byte 1, bit 1 of the second bitmap).
    mem.view[blk.desc_addr + 5 + 8 + 2 + 1] = 0x02
    set_status(mem, blk, VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER)
    devices.handle_output(lg, blk.desc_addr)
    assert blk.running
    assert capsys.readouterr().out == "Device block OK: offered 204, accepted 200\n"
    assert kicks == []

    # Finalizing twice without a reset is the Guest's bug.
    with pytest.raises(LauncherError) as e:
        devices.handle_output(lg, blk.desc_addr)
    assert str(e.value) == "Device block features finalized twice"

    # Use the queue a little, then reset: rings zeroed, index forgotten.
    vq = blk.vqs[0]
    ring = GuestRing(mem, vq)
    ring.add([(0x1000, 16)], [(0x2000, 1)])
    assert vq.get_vq_desc() is not None
    vq.add_used(0, 1)
    set_status(mem, blk, 0)
    devices.handle_output(lg, blk.desc_addr)
    assert resets == [blk]
    assert not blk.running
    assert vq.last_avail_idx == 0
    start = vq.pfn << 12
    assert bytes(mem.view[start:start + vring_size(128)]) == bytes(vring_size(128))
    assert parse_device_page(page_of(devices))[1]["guest_feat"] == bytes(2)
    assert capsys.readouterr().out == "Resetting device block\n"
    # After the reset the device can start again.
    set_status(mem, blk, VIRTIO_CONFIG_S_DRIVER_OK)
    devices.handle_output(lg, blk.desc_addr)
    assert blk.running


def test_reset_keeps_no_notify_on_handlerless_queue():
    mem, devices, con, blk, kicks = make_console_and_block()
    set_status(mem, con, 0)
    devices.handle_output(FakeLg(), con.desc_addr)
    assert GuestRing(mem, con.vqs[0]).used_flags() == 1
    assert GuestRing(mem, con.vqs[1]).used_flags() == 0


def test_status_failed_warns_and_resets(capsys):
    mem, devices, con, blk, kicks = make_console_and_block()
    lg = FakeLg()
    set_status(mem, con, VIRTIO_CONFIG_S_ACKNOWLEDGE)
    devices.handle_output(lg, con.desc_addr)
    set_status(mem, con, VIRTIO_CONFIG_S_FAILED | VIRTIO_CONFIG_S_ACKNOWLEDGE)
    devices.handle_output(lg, con.desc_addr)
    out = capsys.readouterr()
    assert "lguest: Device console configuration FAILED\n" == out.err
    assert "Resetting device console" in out.out
    assert not con.running


def test_early_console_string(capfd):
    mem, devices, con, blk, kicks = make_console_and_block()
    mem.view[0x5000:0x5010] = b"early hello\n\0zz\0"
    devices.handle_output(FakeLg(), 0x5000)
    # A string running up to guest_limit with no NUL stops there.
    end = mem.guest_limit
    mem.view[end - 3:end] = b"abc"
    devices.handle_output(FakeLg(), end - 3)
    assert capfd.readouterr().out == "early hello\nabc"


def test_notify_inside_page_but_not_on_a_descriptor_is_a_string(capfd):
    mem, devices, con, blk, kicks = make_console_and_block()
    # One byte into the console's descriptor: not a status change.  Its
    # bytes are printed up to the first NUL, as the 3.16 Launcher would.
    devices.handle_output(FakeLg(), con.desc_addr + 1)
    assert capfd.readouterr().out == "\x02"
    assert not con.running


@pytest.mark.parametrize("addr", ["limit", 0xFFFFFFFF, 1 << 40])
def test_bad_notify(addr):
    mem, devices, con, blk, kicks = make_console_and_block()
    if addr == "limit":
        addr = mem.guest_limit
    with pytest.raises(LauncherError) as e:
        devices.handle_output(FakeLg(), addr)
    assert str(e.value) == "Bad NOTIFY %#x" % addr


# --- input dispatch and the Waker protocol -------------------------------

def read_ints(fd):
    os.set_blocking(fd, False)
    try:
        data = os.read(fd, 4096)
    except BlockingIOError:
        return []
    return [v for (v,) in struct.iter_unpack("i", data)]


def test_handle_input_serves_readable_fds_and_drops_refusers():
    mem = GuestMemory(MEM)
    devices = DeviceList(mem)
    a_r, a_w = os.pipe()
    b_r, b_w = os.pipe()
    w_r, w_w = os.pipe()
    devices.waker_fd = w_w
    got = []

    def eat(lg, dev):           # consumes a byte and asks for more
        got.append(("a", os.read(dev.fd, 1)))
        return True

    def refuse(lg, dev):        # "no buffers": stop watching me
        got.append(("b", None))
        return False

    a = devices.new_device("a", 9, a_r, eat)
    b = devices.new_device("b", 9, b_r, refuse)
    bq = b.add_virtqueue(8, devices.enable_fd)
    assert devices.infds == {a_r, b_r}

    os.write(a_w, b"xy")
    os.write(b_w, b"z")
    devices.handle_input(FakeLg())
    assert got == [("a", b"x"), ("b", None), ("a", b"y")]
    assert devices.infds == {a_r}
    assert read_ints(w_r) == [-b_r - 1]

    # Nothing readable: returns at once.
    got.clear()
    devices.handle_input(FakeLg())
    assert got == []

    # The Guest adds buffers to b's queue: the kick re-enables b's fd.
    devices.handle_output(FakeLg(), bq.pfn << 12)
    assert devices.infds == {a_r, b_r}
    assert read_ints(w_r) == [b_r]
    # A second kick while watched tells the Waker nothing new.
    devices.handle_output(FakeLg(), bq.pfn << 12)
    assert read_ints(w_r) == []
    for fd in (a_r, a_w, b_r, b_w, w_r, w_w):
        os.close(fd)


def test_tell_waker_survives_dead_waker():
    devices = DeviceList(GuestMemory(MEM))
    r, w = os.pipe()
    os.close(r)
    devices.waker_fd = w
    devices.tell_waker(5)       # EPIPE: ignored, as the C ignored it
    os.close(w)


# --- property: any set of devices reads back as built -------------------

from hypothesis import given, settings                     # noqa: E402
from hypothesis import strategies as st                     # noqa: E402

_devspec = st.tuples(st.integers(1, 255),                     # type
                     st.integers(0, 3),                       # queues
                     st.sets(st.integers(0, 40), max_size=6), # feature bits
                     st.binary(max_size=40))                  # config


@settings(max_examples=200, deadline=None, derandomize=True)
@given(specs=st.lists(_devspec, max_size=8), order=st.randoms(use_true_random=False))
def test_property_page_parses_as_built(specs, order):
    """Devices built in any interleaving of add_virtqueue/add_feature/
    set_config read back, through lguest_device.c's eyes, as specified."""
    mem = GuestMemory(MEM)
    devices = DeviceList(mem)
    devs = [devices.new_device("d%d" % k, t, -1, None) for k, (t, _, _, _) in enumerate(specs)]
    steps = []
    for dev, (t, nq, feats, cfg) in zip(devs, specs):
        steps += [(dev.add_virtqueue, (8, None))] * nq
        steps += [(dev.add_feature, (b,)) for b in sorted(feats)]
        steps += [(dev.set_config, (cfg,))]
    order.shuffle(steps)
    for fn, args in steps:
        fn(*args)
    parsed = parse_device_page(page_of(devices))
    assert len(parsed) == len(specs)
    for dev, d, (t, nq, feats, cfg) in zip(devs, parsed, specs):
        assert d["type"] == t
        assert [q[0] for q in d["vqs"]] == [8] * nq
        assert [(q[1], q[2]) for q in d["vqs"]] == [(vq.irq, vq.pfn) for vq in dev.vqs]
        bits = {i for i in range(d["feature_len"] * 8) if d["host_feat"][i // 8] >> (i % 8) & 1}
        assert bits == set(feats)
        assert d["feature_len"] == (max(feats) // 8 + 1 if feats else 0)
        assert d["config"] == cfg
        assert dev.desc_addr == devices.descpage + d["offset"]
    # Every IRQ is different, numbered from 1.
    irqs = [q[1] for d in parsed for q in d["vqs"]]
    assert sorted(irqs) == list(range(1, len(irqs) + 1))


# --- the console's receive queue -------------------------------------------------

def console_rig():
    """A real console device (setup_console) reading a pipe instead of stdin."""
    from devices import console
    devices = DeviceList(GuestMemory(MEM))
    dev = console.setup_console(devices)
    r, w = os.pipe()
    dev.fd = r
    return devices, dev, GuestRing(devices.mem, dev.vqs[0]), r, w


def test_console_input_lands_in_the_guests_buffer():
    from devices import console
    devices, dev, ring, r, w = console_rig()
    try:
        buf = ring.alloc(64, b"\xee" * 64)
        head = ring.add([], [(buf, 64)])
        os.write(w, b"hi\r")
        assert console.handle_console_input(FakeLg(), dev) is True
        assert ring.get_used() == [(head, 3)]
        assert bytes(devices.mem.view[buf:buf + 4]) == b"hi\r\xee"
    finally:
        os.close(r)
        os.close(w)


def test_output_buffer_in_console_receive_queue_is_fatal():
    """A device-readable buffer where the Host is to write input: the C's
    "Output buffers in console in queue?", before anything is read."""
    from devices import console
    devices, dev, ring, r, w = console_rig()
    try:
        ring.add([(ring.alloc(64), 64)], [])
        os.write(w, b"hi\r")
        with pytest.raises(LauncherError, match=r"^Output buffers in console in queue\?$"):
            console.handle_console_input(FakeLg(), dev)
        assert os.read(r, 10) == b"hi\r"            # the input was not consumed
        assert ring.get_used() == []
    finally:
        os.close(r)
        os.close(w)
