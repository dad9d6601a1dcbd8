#!/usr/bin/env python3
"""Network benchmark (issue 7): ping round trip host -> Guest, and how many
small frames a second the Guest answers under a flood.

    .venv/bin/python bench/net.py [--count 100] [--flood-secs 3]

Everything happens inside a network namespace made for the run and deleted
after it: the Launcher runs there with --tunnet, our Guest runs its
lgtest=net responder, and we ping it from a raw ICMP socket opened inside
the namespace.  Needs root and /dev/net/tun; says so in one line otherwise.

The helpers here (NetNS, ping, flood) are also what tests/test_net.py uses.
"""

import argparse
import ctypes
import os
import select
import statistics
import struct
import socket
import subprocess
import sys
import threading
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLONE_NEWNET = 0x40000000


def net_unavailable():
    """Why network tests can't run here (str), or None if they can."""
    if os.geteuid() != 0:
        return "network tests need root"
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun"
    try:
        subprocess.run(["ip", "-V"], capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "no ip(8)"
    return None


class NetNS:
    """A network namespace of our own: `ip netns add` on entry, `ip netns
    del` on exit.  .argv(cmd) prefixes a command to run inside it;
    .socket(...) opens a socket inside it from this process."""

    def __init__(self, prefix="lgt"):
        self.name = "%s-%d-%s" % (prefix, os.getpid(), uuid.uuid4().hex[:6])

    def __enter__(self):
        subprocess.run(["ip", "netns", "add", self.name], check=True,
                       capture_output=True)
        # Loopback up: nothing of ours needs it, but a namespace with lo
        # down surprises anyone poking around in it.
        self.ip("link", "set", "lo", "up")
        return self

    def __exit__(self, *exc):
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)

    def argv(self, cmd):
        return ["ip", "netns", "exec", self.name] + list(cmd)

    def ip(self, *args, check=True):
        """Run ip(8) inside the namespace; returns its stdout."""
        return subprocess.run(self.argv(["ip"] + list(args)), check=check,
                              capture_output=True, text=True).stdout

    def socket(self, family, type, proto=0):
        """A socket created inside the namespace.  setns() moves only the
        calling thread, so a short-lived thread does it; the socket stays
        in the namespace it was born in wherever we use it."""
        out = {}

        def body():
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                fd = os.open("/run/netns/%s" % self.name, os.O_RDONLY)
                try:
                    if libc.setns(fd, CLONE_NEWNET) != 0:
                        e = ctypes.get_errno()
                        raise OSError(e, os.strerror(e))
                finally:
                    os.close(fd)
                out["sock"] = socket.socket(family, type, proto)
            except BaseException as e:      # handed to the caller
                out["err"] = e

        t = threading.Thread(target=body)
        t.start()
        t.join()
        if "err" in out:
            raise out["err"]
        return out["sock"]


# --- ICMP ---------------------------------------------------------------------

def _csum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def echo_request(ident, seq, payload=b""):
    hdr = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    return struct.pack("!BBHHH", 8, 0, _csum(hdr + payload), ident, seq) + payload


def parse_reply(packet, ident):
    """(seq, payload) of an ICMP echo reply for ident in an IPv4 packet from
    a raw socket, else None."""
    if len(packet) < 20:
        return None
    ihl = (packet[0] & 0x0F) * 4
    icmp = packet[ihl:]
    if len(icmp) < 8:
        return None
    typ, code, _, rid, seq = struct.unpack("!BBHHH", icmp[:8])
    if typ != 0 or code != 0 or rid != ident:
        return None
    return seq, icmp[8:]


def icmp_socket(ns):
    return ns.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)


def ping(sock, dst, count=1, timeout=1.0, interval=0.0, payload=b"pylguest"):
    """Send count echo requests to dst one after another, each waiting up to
    timeout seconds for its reply.  Returns the round trip times in seconds
    (None for a lost one), in order."""
    ident = os.getpid() & 0xFFFF
    rtts = []
    for seq in range(count):
        sent = time.perf_counter()
        deadline = sent + timeout
        try:
            sock.sendto(echo_request(ident, seq, payload), (dst, 0))
        except OSError:
            # No route yet (the tap isn't up) or ARP gave up: lost.
            time.sleep(timeout)
            rtts.append(None)
            continue
        rtt = None
        while True:
            left = deadline - time.perf_counter()
            if left <= 0:
                break
            r, _, _ = select.select([sock], [], [], left)
            if not r:
                break
            got = parse_reply(sock.recv(65536), ident)
            if got and got[0] == seq and got[1] == payload:
                rtt = time.perf_counter() - sent
                break
        rtts.append(rtt)
        if interval:
            time.sleep(interval)
    return rtts


def wait_for_reply(sock, dst, seconds):
    """Ping once a second-ish until the Guest answers; True if it did."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if ping(sock, dst, 1, timeout=0.5)[0] is not None:
            return True
    return False


def flood(sock, dst, seconds=3.0, window=32, payload=b"x" * 18):
    """Keep window echo requests in flight for seconds; returns (sent,
    received, elapsed).  Small payload: a 64-byte Ethernet frame."""
    ident = (os.getpid() + 1) & 0xFFFF
    seq = 0
    outstanding = 0
    received = 0
    start = time.perf_counter()
    end = start + seconds
    last_progress = start
    while True:
        now = time.perf_counter()
        if now >= end:
            break
        while outstanding < window:
            sock.sendto(echo_request(ident, seq & 0xFFFF, payload), (dst, 0))
            seq += 1
            outstanding += 1
        r, _, _ = select.select([sock], [], [], min(0.05, end - now))
        if not r:
            # Lost replies would stall the window: after a quiet 200 ms,
            # count them lost and refill.
            if time.perf_counter() - last_progress > 0.2:
                outstanding = 0
                last_progress = time.perf_counter()
            continue
        while True:
            try:
                pkt = sock.recv(65536, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            if parse_reply(pkt, ident):
                received += 1
                outstanding = max(0, outstanding - 1)
                last_progress = time.perf_counter()
    return seq, received, time.perf_counter() - start


# --- the benchmark ----------------------------------------------------------------

HOST_IP = "10.213.7.1"
GUEST_IP = "10.213.7.2"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=100, help="pings for the RTT")
    ap.add_argument("--flood-secs", type=float, default=3.0)
    ap.add_argument("--mem", type=int, default=64)
    opts = ap.parse_args()

    why = net_unavailable()
    if why:
        print("bench/net.py: skipped: %s" % why)
        return 0
    guest = os.path.join(ROOT, "guest", "guest.elf")
    if not os.path.exists(guest):
        subprocess.run(["make", "-s", "-C", os.path.join(ROOT, "guest")],
                       check=True)
    serve_secs = int(opts.flood_secs + opts.count * 0.05 + 30)

    with NetNS("lgbench") as ns:
        cmd = ns.argv([sys.executable, os.path.join(ROOT, "launcher.py"),
                       "--tunnet=%s" % HOST_IP, str(opts.mem), guest,
                       "lgtest=net", "lgip=%s" % GUEST_IP,
                       "lgnet_secs=%d" % serve_secs])
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            sock = icmp_socket(ns)
            if not wait_for_reply(sock, GUEST_IP, 30):
                proc.kill()
                out, err = proc.communicate()
                print("bench/net.py: the Guest never answered a ping\n%s%s"
                      % (out[-2000:], err[-2000:]))
                return 1
            rtts = ping(sock, GUEST_IP, opts.count, timeout=1.0)
            got = [r for r in rtts if r is not None]
            sent, received, elapsed = flood(sock, GUEST_IP, opts.flood_secs)
        finally:
            proc.terminate()
            try:
                proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()

    if got:
        print("net: ping RTT host -> Guest: median %.3f ms, min %.3f ms, "
              "max %.3f ms (%d of %d answered)"
              % (statistics.median(got) * 1e3, min(got) * 1e3, max(got) * 1e3,
                 len(got), len(rtts)))
    else:
        print("net: ping RTT host -> Guest: no replies of %d" % len(rtts))
    print("net: flood of 64-byte frames: %.0f replies/s (%d sent, %d answered "
          "in %.2f s, window 32)" % (received / elapsed, sent, received, elapsed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
