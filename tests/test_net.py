"""The network device (devices/net.py, issue 7), end to end.

Every test makes its own network namespace, runs the Launcher inside it
with `ip netns exec` and --tunnet, and talks to our Guest's `lgtest=net`
responder (ARP + ICMP echo) from a raw socket opened in that namespace.
No address, tap or bridge ever appears outside it, and the namespace is
deleted afterwards.
"""
import re
import subprocess

import pytest

from conftest import PYTHON, ROOT, Launcher, assert_no_traceback
# The namespace and ICMP tools are bench/net.py's: one copy for both.
from bench.net import NetNS, icmp_socket, net_unavailable, ping, wait_for_reply

why = net_unavailable()
pytestmark = [pytest.mark.net, pytest.mark.skipif(why is not None, reason=why or "")]

HOST_IP = "10.213.9.1"
GUEST_IP = "10.213.9.2"
SERVE_SECS = 5


def start(ns, net_arg, *guest_args, verbose=True):
    return Launcher((["--verbose"] if verbose else []) + [
        "--tunnet=%s" % net_arg, "64", "guest/guest.elf", *guest_args],
        prefix=ns.argv([]))


def finish(run, timeout=40):
    """(stdout, stderr) of a Launcher started by start(), once it has ended."""
    proc = run.finish(timeout)
    assert_no_traceback(proc)
    return proc.stdout, proc.stderr


def neighbour_mac(ns, ip):
    m = re.search(r"lladdr ([0-9a-f:]{17})", ns.ip("neigh", "show", ip))
    return m.group(1) if m else None


def tap_mac(ns, name):
    m = re.search(r"link/ether ([0-9a-f:]{17})", ns.ip("link", "show", name))
    return m.group(1)


def test_host_pings_guest_and_arp_gives_the_launchers_mac(guest_elf):
    with NetNS() as ns:
        proc = start(ns, HOST_IP, "lgtest=net", "lgip=%s" % GUEST_IP,
                     "lgnet_secs=%d" % SERVE_SECS)
        try:
            sock = icmp_socket(ns)
            assert wait_for_reply(sock, GUEST_IP, 30), "no reply at all"
            rtts = ping(sock, GUEST_IP, 10, timeout=1.0,
                        payload=bytes(range(256)) * 4)
            arp = neighbour_mac(ns, GUEST_IP)
            tap = tap_mac(ns, "tap0")
            addrs = ns.ip("-4", "addr", "show", "tap0")
        finally:
            out, err = finish(proc)
    assert all(r is not None for r in rtts), rtts
    # The host side got the address we asked for, with a /24.
    assert "inet %s/24" % HOST_IP in addrs
    # ARP resolves to the MAC the Launcher put in config space, which the
    # Guest reports using, and which is not the tap's own.
    m = re.search(r"net tap0: Guest MAC ([0-9a-f:]{17})", out)
    assert m, out
    assert arp == m.group(1)
    assert "net: mac=%s ip=%s" % (arp, GUEST_IP) in out
    assert arp != tap
    assert int(arp[:2], 16) & 3 == 2           # locally administered unicast
    assert "device 0: tun net %s" % HOST_IP in out
    assert "lgtest net: PASS" in out
    assert proc.returncode == 0, err


def test_mac_given_on_the_command_line(guest_elf):
    mac = "02:6c:67:75:65:73"
    with NetNS() as ns:
        proc = start(ns, "%s:%s" % (HOST_IP, mac), "lgtest=net",
                     "lgip=%s" % GUEST_IP, "lgnet_secs=3", verbose=False)
        try:
            sock = icmp_socket(ns)
            assert wait_for_reply(sock, GUEST_IP, 30)
            arp = neighbour_mac(ns, GUEST_IP)
        finally:
            out, err = finish(proc)
    assert arp == mac
    assert "lgtest net: PASS" in out and proc.returncode == 0


def test_oversized_frames_are_dropped_and_counted(guest_elf):
    """A frame bigger than the Guest's receive buffer (1518 bytes) is
    dropped and counted; the Guest never sees a truncated one, and small
    frames keep flowing."""
    with NetNS() as ns:
        proc = start(ns, HOST_IP, "lgtest=net", "lgip=%s" % GUEST_IP,
                     "lgnet_secs=%d" % SERVE_SECS)
        try:
            sock = icmp_socket(ns)
            assert wait_for_reply(sock, GUEST_IP, 30)
            # A jumbo MTU on the host side lets the kernel send a 3042-byte
            # frame without fragmenting it.
            ns.ip("link", "set", "tap0", "mtu", "9000")
            big = ping(sock, GUEST_IP, 3, timeout=0.3, payload=bytes(3000))
            small = ping(sock, GUEST_IP, 3, timeout=1.0)
        finally:
            out, err = finish(proc)
    assert big == [None, None, None]
    assert all(r is not None for r in small), small
    assert re.search(r"dropped oversized frame of 3042 bytes \(buffer holds 1518\)",
                     out), out[-2000:]
    assert re.search(r"net tap0: \d+ frames in, \d+ out, 3 oversized frames dropped",
                     out), out[-2000:]
    assert "lgtest net: PASS" in out        # the Guest saw no bad length
    assert proc.returncode == 0, err


def test_bridge(guest_elf):
    """--tunnet=bridge:NAME: the tap joins an existing bridge, which holds
    the host's address; the Guest answers through it."""
    with NetNS() as ns:
        ns.ip("link", "add", "lgbr0", "type", "bridge")
        ns.ip("addr", "add", HOST_IP + "/24", "dev", "lgbr0")
        ns.ip("link", "set", "lgbr0", "up")
        proc = start(ns, "bridge:lgbr0", "lgtest=net", "lgip=%s" % GUEST_IP,
                     "lgnet_secs=3")
        try:
            sock = icmp_socket(ns)
            assert wait_for_reply(sock, GUEST_IP, 30)
            master = ns.ip("link", "show", "tap0")
        finally:
            out, err = finish(proc)
    assert "master lgbr0" in master
    assert "attached to bridge: lgbr0" in out
    assert "lgtest net: PASS" in out and proc.returncode == 0


@pytest.mark.parametrize("arg, message", [
    ("bridge:", "lguest: must specify bridge name"),
    ("bridge:nosuchbr", "lguest: bridge nosuchbr does not exist"),
    ("10.1.2", "lguest: Bad IP address '10.1.2' for --tunnet"),
    ("10.1.2.3:zz:11", "lguest: Bad MAC address 'zz:11' for --tunnet"),
])
def test_bad_tunnet_arguments(guest_elf, arg, message):
    with NetNS() as ns:
        proc = start(ns, arg, "lgtest=hcall", verbose=False)
        out, err = finish(proc)
        links = ns.ip("-o", "link")
    assert proc.returncode == 1
    assert err == message + "\n"
    assert "tap" not in links                  # the tap went with us


def test_two_net_devices_in_command_line_order(guest_elf):
    with NetNS() as ns:
        proc = Launcher(["--verbose", "--tunnet=10.213.10.1", "--tunnet=10.213.11.1", "64",
                         "guest/guest.elf", "lgtest=hcall"], prefix=ns.argv([]))
        out, err = finish(proc)
    assert proc.returncode == 0, err
    assert out.index("device 0: tun net 10.213.10.1") \
        < out.index("device 1: tun net 10.213.11.1") \
        < out.index("device 2: console")


# --- The vring side, with the test playing the Guest ---------------------------
#
# Our Guest always puts the virtio_net_hdr in a descriptor of its own and
# posts 1518-byte frames; Linux may do otherwise.  Here the test writes the
# descriptor chains itself into a real GuestMemory, the Launcher's real
# handlers move real frames through a real tap (in a namespace), and a real
# Host (LguestDev, initialized, never run) takes the interrupts.

VRING_SCRIPT = r'''
import json, os, socket, struct, sys, time
sys.path.insert(0, sys.argv[1])
from devices.memory import GuestMemory
from devices.devpage import DeviceList
from devices import net
from devices.abi import VRING_DESC, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, U16, VRING_USED_ELEM
from host import LguestDev
from host.abi import LHREQ_INITIALIZE

mem = GuestMemory(16 << 20)
devices = DeviceList(mem)
dev = net.setup_tun_net(devices, "10.213.12.1:02:00:5e:10:20:30")
devices.seal()
lg = LguestDev()
lg.write((LHREQ_INITIALIZE, mem.base, mem.guest_limit // 4096, 0x100000))
rx, tx = dev.vqs
v = mem.view
pkt = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
pkt.bind((dev.priv.ifname, 0))
pkt.settimeout(2)
out = {}

def post(vq, chain):
    """chain: [(addr, len, writable)]: descriptors 0.. of vq, made available."""
    base = vq.last_avail_idx  # where the Launcher will look next
    for i, (addr, length, w) in enumerate(chain):
        nxt = i + 1 if i + 1 < len(chain) else 0
        flags = (VRING_DESC_F_NEXT if i + 1 < len(chain) else 0) | (VRING_DESC_F_WRITE if w else 0)
        VRING_DESC.pack_into(v, vq.desc_addr + 16 * i, addr, length, flags, nxt)
    idx = U16.unpack_from(v, vq.avail_addr + 2)[0]
    U16.pack_into(v, vq.avail_addr + 4 + 2 * (idx % vq.num), 0)
    U16.pack_into(v, vq.avail_addr + 2, (idx + 1) & 0xFFFF)

def used(vq):
    idx = U16.unpack_from(v, vq.used_addr + 2)[0]
    if idx == 0:
        return None
    return idx, VRING_USED_ELEM.unpack_from(v, vq.used_addr + 4 + 8 * ((idx - 1) % vq.num))

def drain():
    """Throw away whatever the host's stack sent on its own (IPv6 router
    solicitations and the like), so the next frame read is ours."""
    while True:
        try:
            os.read(dev.fd, 65536)
        except BlockingIOError:
            return

def host_sends(frame):
    time.sleep(0.05)
    drain()
    pkt.send(frame)
    time.sleep(0.1)

frame = bytes.fromhex("02005e102030") + bytes.fromhex("020000000001") + b"\x88\xb5" + bytes(range(46))
# 1. Receive into ONE descriptor holding header and frame, pre-filled with junk.
v[0x10000:0x10800] = b"\xee" * 0x800
post(rx, [(0x10000, 0x800, True)])
host_sends(frame)
out["rx_ret"] = net.handle_tun_input(lg, dev)
out["rx_used"] = used(rx)
out["rx_hdr"] = bytes(v[0x10000:0x1000a]).hex()
out["rx_frame_ok"] = bytes(v[0x1000a:0x1000a + len(frame)]) == frame
out["rx_after_untouched"] = bytes(v[0x1000a + len(frame):0x10800]) == b"\xee" * (0x800 - 10 - len(frame))

# 2. A buffer too small for the next frame: dropped, counted, buffer reused.
post(rx, [(0x20000, 10, True), (0x20010, 40, True)])
v[0x20010:0x20040] = b"\xdd" * 0x30
host_sends(frame)                                   # 60 bytes > 40
out["small_ret"] = net.handle_tun_input(lg, dev)
out["small_used"] = used(rx)
out["dropped"] = dev.priv.rx_dropped_oversize
out["small_past_end_untouched"] = bytes(v[0x20038:0x20040]) == b"\xdd" * 8
small = bytes.fromhex("02005e102030020000000001") + b"\x88\xb5" + b"hi"
host_sends(small)                                   # 16 bytes: fits the same buffer
out["small2_ret"] = net.handle_tun_input(lg, dev)
out["small2_used"] = used(rx)
out["small2_ok"] = bytes(v[0x20010:0x20010 + len(small)]) == small

# 3. No buffer at all: stop watching, the frame waits in the tap.
host_sends(frame)
out["nobuf_ret"] = net.handle_tun_input(lg, dev)

# 4. Transmit: header and frame in one descriptor, then split over three.
v[0x30000:0x3000a] = bytes(10)
v[0x3000a:0x3000a + len(frame)] = frame
post(tx, [(0x30000, 10 + len(frame), False)])
net.handle_net_output(lg, tx)
out["tx1"] = pkt.recv(4096) == frame
v[0x31000:0x31004] = bytes(4); v[0x32000:0x32010] = bytes(6) + frame[:10]; v[0x33000:0x33000 + len(frame) - 10] = frame[10:]
post(tx, [(0x31000, 4, False), (0x32000, 16, False), (0x33000, len(frame) - 10, False)])
net.handle_net_output(lg, tx)
out["tx2"] = pkt.recv(4096) == frame
out["tx_used"] = used(tx)
print(json.dumps(out))
'''


def test_vring_edges_with_the_test_as_guest(tmp_path):
    import json
    script = tmp_path / "guest_side.py"
    script.write_text(VRING_SCRIPT)
    with NetNS() as ns:
        # No IPv6 on the tap: its router solicitations would be frames too.
        subprocess.run(ns.argv(["sysctl", "-qw",
                                "net.ipv6.conf.default.disable_ipv6=1"]),
                       capture_output=True)
        proc = subprocess.run(ns.argv([PYTHON, str(script), str(ROOT)]),
                              capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    # 1. header zeroed, frame right behind it, nothing written past it.
    assert r["rx_ret"] is True
    assert r["rx_used"] == [1, [0, 10 + 60]]
    assert r["rx_hdr"] == "00" * 10
    assert r["rx_frame_ok"] and r["rx_after_untouched"]
    # 2. oversized: dropped, counted, not used, buffer kept for the next.
    assert r["small_ret"] is True
    assert r["small_used"] == [1, [0, 70]]          # used ring unchanged
    assert r["dropped"] == 1
    assert r["small_past_end_untouched"]
    assert r["small2_ret"] is True
    assert r["small2_used"] == [2, [0, 10 + 16]]
    assert r["small2_ok"]
    # 3. no buffer: stop watching.
    assert r["nobuf_ret"] is False
    # 4. both transmit layouts reach the wire intact.
    assert r["tx1"] and r["tx2"]
    assert r["tx_used"][0] == 2
