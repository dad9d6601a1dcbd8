"""/dev/lguest over the socket (host/lguest_socket.py), spoken from Python exactly as the
preload shim speaks it for the C Launcher: OPEN and ATTACH on the Host socket, the
Guest memory memfd with LHREQ_INITIALIZE, eventfds with LHREQ_EVENTFD, READ to run the
Guest, IRQs from a second connection, release when the opener's connection closes."""
import errno
import mmap
import os
import socket
import struct
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "guests"))
from harness import LOAD, MODE, build  # noqa: E402

from host.lguest_socket import ATTACH, DMA, OPEN, READ, REQ, RET, WRITE, LguestServer  # noqa: E402

SIZE = 16 << 20
BASE = 0x40000000                 # "the Launcher's" address of Guest memory: any will do


class Launcher:
    """The shim's side, in Python; the server runs on this thread (serve())."""

    def __init__(self):
        self.host, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.server = LguestServer(theirs)
        self.done = threading.Event()

    def connect(self, op, aux0):
        mine, far = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.host.sendmsg([REQ.pack(op, 0, 0, aux0, 0)], _rights(far.fileno()))
        far.close()
        return mine, RET.unpack(mine.recv(16))[0]

    @staticmethod
    def call(sock, op, payload=b"", size=None, off=0, aux=(0, 0), fd=None):
        sock.sendmsg([REQ.pack(op, len(payload) if size is None else size, off, *aux),
                      payload], _rights(fd) if fd is not None else [])
        if op == DMA:
            return None
        data = sock.recv(4096)
        ret = RET.unpack_from(data)[0]
        return (ret, data[4:]) if op == READ else ret

    def guest_memory(self, scenarios, mode):
        image, _ = build(scenarios)
        fd = os.memfd_create("guest")
        os.ftruncate(fd, SIZE)
        m = mmap.mmap(fd, SIZE)
        m[LOAD:LOAD + len(image)] = image
        struct.pack_into("<I", m, MODE, mode)
        return fd, m

    def run(self, body):
        """body(self) on a thread while the server serves here; returns what body did."""
        out = {}

        def client():
            try:
                out["result"] = body(self)
            except BaseException as e:
                out["error"] = e
            finally:
                self.server.shutdown()
        t = threading.Thread(target=client)
        t.start()
        self.server.serve()
        t.join(10)
        self.host.close()
        if "error" in out:
            raise out["error"]
        return out.get("result")


def _rights(fd):
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))]


def q(*w):
    return struct.pack("<%dQ" % len(w), *w)


def test_a_guest_runs_over_the_socket_with_eventfds_and_irqs():
    def body(L):
        main, fid = L.connect(OPEN, 8)
        assert fid > 0
        fd, m = L.guest_memory("hypercalls", 5)       # NOTIFY 0x1234, 0x5678, ...
        assert L.call(main, WRITE, q(0, BASE, SIZE // 4096, LOAD), aux=(BASE, SIZE),
                      fd=fd) == 24
        os.close(fd)
        efd = os.eventfd(0)
        assert L.call(main, WRITE, q(4, 0x1234, 77), fd=efd) == 0
        ret, data = L.call(main, READ, size=8)
        assert (ret, data) == (8, q(0x5678))          # 0x1234 went to the eventfd
        assert os.eventfd_read(efd) == 1
        # A second task: attaches its own connection and sends interrupts.
        other, r = L.connect(ATTACH, fid)
        assert r == 0
        assert L.call(other, WRITE, q(2, 1)) == 0
        assert L.call(other, WRITE, q(2, 40)) == -errno.EINVAL
        # Guest memory really is shared: the Guest's NOTIFY of what LGUEST_INIT wrote.
        ret, data = L.call(main, READ, size=8)
        assert ret == 8 and struct.unpack("<Q", data)[0] == 4 << 20     # reserve_mem
        while True:
            ret, data = L.call(main, READ, size=8)
            if ret < 0:
                break
        assert ret == -errno.ENOENT
        assert L.call(main, READ, size=100) == (18, b"CRASH: Power down\0")
        assert L.call(other, WRITE, q(2, 1)) == -errno.ENOENT
        m.close()
    Launcher().run(body)


def test_bad_opens_and_attaches():
    def body(L):
        assert L.connect(OPEN, 3)[1] == -errno.EINVAL  # no such sizeof(long)
        assert L.connect(ATTACH, 999)[1] == -errno.EBADF
        main, _ = L.connect(OPEN, 8)
        assert L.call(main, WRITE, q(2, 1)) == -errno.EINVAL   # before INITIALIZE
        # Guest memory the Host can't reach: no memfd came with it.
        assert L.call(main, WRITE, q(0, BASE, SIZE // 4096, LOAD)) == -errno.EFAULT
    Launcher().run(body)


def test_closing_the_openers_connection_stops_a_running_guest():
    def body(L):
        main, fid = L.connect(OPEN, 8)
        fd, m = L.guest_memory("irqs", 7)             # NOTIFY 1, then spin
        assert L.call(main, WRITE, q(0, BASE, SIZE // 4096, LOAD), aux=(BASE, SIZE),
                      fd=fd) == 24
        assert L.call(main, READ, size=8) == (8, q(1))
        main.sendmsg([REQ.pack(READ, 8, 0, 0, 0)])     # run it, and go away
        time.sleep(0.2)
        main.close()
        # The Guest is stopped and the file released, with nobody asking.
        deadline = time.monotonic() + 5
        while fid in L.server.files and time.monotonic() < deadline:
            time.sleep(0.01)
        m.close()
        return fid in L.server.files
    assert Launcher().run(body) is False
