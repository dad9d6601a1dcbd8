"""Unit tests for waker/: the Waker's int protocol and BREAK behaviour, and the
process hygiene rules (no orphans, no stray fds).

The Waker gets the Host's real BREAK channel end (host.channel.Breaker on one end
of a socketpair); the test holds the other end and plays the Host's helper
thread: a byte b"B" from the Waker is a BREAK, and the Waker then blocks until
the test (playing the Launcher's LHREQ_BREAK 0) sends b"R" back, exactly as the
Host's release_waker() does.
"""
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from conftest import ROOT, gone_within, wait_child_exit
from devices.devpage import DeviceList
from devices.memory import GuestMemory
from host.channel import Breaker
from waker import (LHREQ_BREAK, children_alive, reap_children, setup_waker,
                   stop_children)
from waker import procs


class SocketLg:
    """An lg whose breaker() is the Host's real Breaker; .host is the other end."""

    def __init__(self):
        self.host, waker_end = socket.socketpair()
        self.b = Breaker(waker_end)
        self.waker_end = waker_end

    def breaker(self):
        return self.b


class WakerRig:
    def __init__(self, nfds=2):
        self.devices = DeviceList(GuestMemory(1 << 20))
        self.pipes = [os.pipe() for _ in range(nfds)]
        for k, (r, w) in enumerate(self.pipes):
            self.devices.new_device("d%d" % k, 9, r, lambda lg, dev: True)
        self.lg = SocketLg()
        self.ctrl = setup_waker(self.lg, self.devices)
        self.pid = [p for p, n in procs.CHILDREN.items() if n == "waker"][-1]

    def breaks(self, timeout):
        """Number of BREAKs seen within timeout seconds (without clearing).
        Expecting one: wait up to timeout for it, then 0.1 s for a second
        one that must not come (a waiting Waker sends no more)."""
        if timeout > 1:
            n = self.breaks_until(timeout)
            return n + self.breaks(0.1) if n else n
        n = 0
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return n
            r, _, _ = select.select([self.lg.host], [], [], left)
            if not r:
                return n
            n += self._count(self.lg.host.recv(100))

    def breaks_until(self, timeout):
        r, _, _ = select.select([self.lg.host], [], [], timeout)
        return self._count(self.lg.host.recv(100)) if r else 0

    @staticmethod
    def _count(data):
        assert set(data) <= {ord("B")}, data
        return len(data)

    def clear(self):
        self.lg.host.sendall(b"R")

    def send(self, value):
        os.write(self.ctrl, struct.pack("i", value))

    def exit_status(self, timeout=5):
        return wait_child_exit(self.pid, timeout, "Waker")

    def close(self):
        try:
            os.close(self.ctrl)
        except OSError:
            pass
        self.lg.host.close()
        for r, w in self.pipes:
            os.close(r)
            os.close(w)
        if self.pid in procs.CHILDREN:
            return self.exit_status()


@pytest.fixture
def wk():
    rig = WakerRig()
    yield rig
    rig.close()


def test_break_when_watched_fd_readable_and_wait_for_clear(wk):
    assert wk.lg.waker_end.fileno() == -1    # the Launcher dropped its copy
    assert wk.devices.waker_fd == wk.ctrl
    assert wk.breaks(0.2) == 0       # nothing readable: no BREAK
    r0, w0 = wk.pipes[0]
    os.write(w0, b"x")
    assert wk.breaks(2) == 1
    # Still readable, but not cleared: the Waker waits, no second BREAK.
    assert wk.breaks(0.3) == 0
    wk.clear()                        # Launcher cleared without reading
    assert wk.breaks(2) == 1          # still readable: again
    os.read(r0, 1)                    # now the Launcher serves the input
    wk.clear()
    assert wk.breaks(0.3) == 0


def test_remove_and_add_fds(wk):
    (r0, w0), (r1, w1) = wk.pipes
    wk.send(-r0 - 1)
    os.write(w0, b"x")
    assert wk.breaks(0.3) == 0        # r0 is no longer watched
    os.write(w1, b"y")
    assert wk.breaks(2) == 1          # r1 still is
    os.read(r1, 1)
    wk.clear()
    wk.send(r0)                        # watch r0 again: it is readable
    assert wk.breaks(2) == 1
    os.read(r0, 1)
    wk.clear()
    assert wk.breaks(0.3) == 0


def test_orders_come_before_breaks(wk):
    """The Launcher removes an fd and clears the BREAK: the Waker must act
    on the removal before it looks at that (still readable) fd again."""
    r0, w0 = wk.pipes[0]
    os.write(w0, b"x")
    assert wk.breaks(2) == 1
    wk.send(-r0 - 1)                  # handle_input said "no buffers"
    wk.clear()
    assert wk.breaks(0.3) == 0


def test_many_orders_in_one_read(wk):
    (r0, w0), (r1, w1) = wk.pipes
    os.write(wk.ctrl, struct.pack("4i", -r0 - 1, -r1 - 1, r1, -r1 - 1))
    os.write(w0, b"x")
    os.write(w1, b"y")
    assert wk.breaks(0.3) == 0


def test_unknown_fd_is_ignored_not_fatal(wk):
    r0, w0 = wk.pipes[0]
    wk.send(987)                      # not open in the Waker
    os.write(w0, b"x")
    assert wk.breaks(2) == 1
    wk.clear()


def test_exit_on_launcher_eof(wk):
    os.close(wk.ctrl)
    assert wk.exit_status() == 0


def test_exit_when_launcher_gone_during_break(wk):
    r0, w0 = wk.pipes[0]
    os.write(w0, b"x")
    assert wk.breaks(2) == 1
    wk.lg.host.close()                 # breaker.write() now returns False
    assert wk.exit_status() == 0


def waker_fds(pid, count):
    """The Waker's open fds, once it has closed the Launcher's (it does so just
    after the fork): wait for there to be count of them, up to 5 s."""
    deadline = time.monotonic() + 5
    while True:
        fds = {int(f) for f in os.listdir("/proc/%d/fd" % pid)}
        if len(fds) == count or time.monotonic() > deadline:
            return fds
        time.sleep(0.01)


def test_waker_holds_only_what_it_needs(wk):
    want = {0, 1, 2, wk.pipes[0][0], wk.pipes[1][0]}
    # + its end of the control pipe and the Breaker's one socket
    fds = waker_fds(wk.pid, len(want) + 2)
    assert want <= fds and len(fds) == len(want) + 2, fds
    # The write ends of the watched pipes, the Launcher's end of the control
    # pipe and the Host's end of the BREAK channel are not its.
    for fd in (wk.pipes[0][1], wk.pipes[1][1], wk.ctrl, wk.lg.host.fileno()):
        assert fd not in fds


def test_waker_of_the_real_host_holds_only_what_it_needs():
    """The same with the Host's own LguestDev, helper thread socket and all."""
    from host import LguestDev
    from host.abi import LHREQ_INITIALIZE
    mem = GuestMemory(1 << 20)
    devices = DeviceList(mem)
    r, w = os.pipe()
    devices.new_device("d", 9, r, lambda lg, dev: True)
    lg = LguestDev()
    lg.write((LHREQ_INITIALIZE, mem.base, mem.guest_limit // 4096, 0))
    ctrl = setup_waker(lg, devices)
    pid = [p for p, n in procs.CHILDREN.items() if n == "waker"][-1]
    try:
        fds = waker_fds(pid, 6)
        assert len(fds) == 6 and {0, 1, 2, r} <= fds, fds
        assert w not in fds and ctrl not in fds
        assert lg.guest.channel.host_sock.fileno() not in fds
    finally:
        os.close(ctrl)
        assert wait_child_exit(pid, 5, "Waker") == 0
        lg.close()
        os.close(r)
        os.close(w)


def test_reap_and_alive_and_stop():
    rig = WakerRig(nfds=1)
    assert children_alive().get("waker") == rig.pid
    os.kill(rig.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    gone = []
    while not gone and time.monotonic() < deadline:
        gone = reap_children()
        time.sleep(0.01)
    assert gone == [("waker", rig.pid, -signal.SIGKILL)]
    assert "waker" not in children_alive()
    rig.close()
    rig2 = WakerRig(nfds=1)
    stop_children(timeout=0.2)         # still watching: gets killed
    assert rig2.pid not in procs.CHILDREN
    assert not psutil.pid_exists(rig2.pid) or \
        psutil.Process(rig2.pid).status() == psutil.STATUS_ZOMBIE
    rig2.close()


# --- no orphans: a whole "Launcher" in its own process ------------------

LAUNCHER_SCRIPT = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, %(root)r)
    from devices.memory import GuestMemory
    from devices.devpage import DeviceList
    from devices.block import setup_block_file
    from host import LguestDev
    from host.abi import LHREQ_INITIALIZE
    from waker import setup_waker
    mem = GuestMemory(1 << 20)
    devices = DeviceList(mem)
    dev = setup_block_file(devices, sys.argv[1])
    lg = LguestDev()
    lg.write((LHREQ_INITIALIZE, mem.base, mem.guest_limit // 4096, 0))
    setup_waker(lg, devices)
    print("ready", flush=True)
    sys.stdin.readline()
    how = sys.argv[2]
    if how == "exit":
        sys.exit(0)
    if how == "error":
        raise SystemExit(1)
    time.sleep(60)
""")


@pytest.mark.parametrize("how", ["sigkill", "sigterm", "exit", "error"])
def test_no_orphans(tmp_path, how):
    """A "Launcher" that just forks the block worker and the Waker and then dies,
    any way at all: both children follow it (PDEATHSIG, EOF on their pipes)."""
    img = tmp_path / "d.img"
    img.write_bytes(bytes(65536))
    script = tmp_path / "launcher_like.py"
    script.write_text(LAUNCHER_SCRIPT % {"root": str(ROOT)})
    proc = subprocess.Popen([sys.executable, str(script), str(img), how],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "ready\n"
        # Exactly Launcher + worker + Waker.
        kids = [k.pid for k in psutil.Process(proc.pid).children(recursive=True)]
        assert len(kids) == 2, kids
        if how in ("sigkill", "sigterm"):
            proc.send_signal(signal.SIGKILL if how == "sigkill" else signal.SIGTERM)
        else:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        assert proc.wait(timeout=10) == {"sigkill": -9, "sigterm": -15, "exit": 0,
                                         "error": 1}[how]
        assert gone_within(kids, 5)
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
