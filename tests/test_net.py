"""The network device (devices/net.py, issue 7), end to end.

Every test makes its own network namespace, runs the Launcher inside it
with `ip netns exec` and --tunnet, and talks to our Guest's `lgtest=net`
responder (ARP + ICMP echo) from a raw socket opened in that namespace.
No address, tap or bridge ever appears outside it, and the namespace is
deleted afterwards.
"""
import re
import subprocess
import sys
import time

import pytest

from conftest import LAUNCHER, PYTHON, ROOT, assert_no_traceback
from bench.net import NetNS, icmp_socket, net_unavailable, ping, wait_for_reply

why = net_unavailable()
pytestmark = pytest.mark.skipif(why is not None, reason=why or "")

HOST_IP = "10.213.9.1"
GUEST_IP = "10.213.9.2"
SERVE_SECS = 5


def start(ns, net_arg, *guest_args, verbose=True):
    cmd = [PYTHON, str(LAUNCHER)] + (["--verbose"] if verbose else []) + [
        "--tunnet=%s" % net_arg, "64", "guest/guest.elf", *guest_args]
    return subprocess.Popen(ns.argv(cmd), cwd=ROOT, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def finish(proc, timeout=40):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError("Launcher hung:\n%s\n%s" % (out[-3000:], err))
    assert "Traceback" not in out + err, err
    return out, err


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
        cmd = [PYTHON, str(LAUNCHER), "--verbose", "--tunnet=10.213.10.1",
               "--tunnet=10.213.11.1", "64", "guest/guest.elf", "lgtest=hcall"]
        proc = subprocess.Popen(ns.argv(cmd), cwd=ROOT,
                                stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        out, err = finish(proc)
    assert proc.returncode == 0, err
    assert out.index("device 0: tun net 10.213.10.1") \
        < out.index("device 1: tun net 10.213.11.1") \
        < out.index("device 2: console")
