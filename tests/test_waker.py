"""Unit tests for waker/: the Waker's int protocol and BREAK behaviour with a
fake breaker, and the process hygiene rules (no orphans, no stray fds).

FakeBreaker stands in for the Host's BREAK channel with two pipes: a BREAK
is a byte "B" to the test, and the Waker then blocks until the test (playing
the Launcher's LHREQ_BREAK 0) writes a byte back, exactly as the real
breaker.write((LHREQ_BREAK, 1)) blocks until the Launcher clears it.
"""
import os
import select
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from conftest import wait_child_exit
from devices.devpage import DeviceList
from devices.memory import GuestMemory
from waker import (LHREQ_BREAK, children_alive, reap_children, setup_waker,
                   stop_children)
from waker import procs

ROOT = Path(__file__).resolve().parent.parent


class FakeBreaker:
    def __init__(self):
        self.break_r, self.break_w = os.pipe()    # Waker -> test: "B"
        self.clear_r, self.clear_w = os.pipe()    # test -> Waker: cleared
        self.closed = False

    def fds(self):
        return {self.break_w, self.clear_r}

    def write(self, args):
        """In the Waker: BREAK, then wait to be cleared."""
        assert tuple(args) == (LHREQ_BREAK, 1)
        os.write(self.break_w, b"B")
        return os.read(self.clear_r, 1) == b"C"

    def close(self):
        """In the Launcher, after the fork: drop the Waker's ends."""
        os.close(self.break_w)
        os.close(self.clear_r)
        self.closed = True


class FakeLg:
    def __init__(self):
        self.b = FakeBreaker()

    def breaker(self):
        return self.b


class WakerRig:
    def __init__(self, nfds=2):
        self.devices = DeviceList(GuestMemory(1 << 20))
        self.pipes = [os.pipe() for _ in range(nfds)]
        for k, (r, w) in enumerate(self.pipes):
            self.devices.new_device("d%d" % k, 9, r, lambda lg, dev: True)
        self.lg = FakeLg()
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
            r, _, _ = select.select([self.lg.b.break_r], [], [], left)
            if not r:
                return n
            n += len(os.read(self.lg.b.break_r, 100))

    def breaks_until(self, timeout):
        r, _, _ = select.select([self.lg.b.break_r], [], [], timeout)
        return len(os.read(self.lg.b.break_r, 100)) if r else 0

    def clear(self):
        os.write(self.lg.b.clear_w, b"C")

    def send(self, value):
        os.write(self.ctrl, struct.pack("i", value))

    def exit_status(self, timeout=5):
        return wait_child_exit(self.pid, timeout, "Waker")

    def close(self):
        for fd in (self.ctrl, self.lg.b.break_r, self.lg.b.clear_w):
            try:
                os.close(fd)
            except OSError:
                pass
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
    assert wk.lg.b.closed            # the Launcher dropped its copy
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
    os.close(wk.lg.b.clear_w)          # breaker.write() now returns False
    assert wk.exit_status() == 0


def test_waker_holds_only_what_it_needs(wk):
    deadline = time.monotonic() + 5
    want = {0, 1, 2, wk.pipes[0][0], wk.pipes[1][0]}
    while True:
        fds = {int(f) for f in os.listdir("/proc/%d/fd" % wk.pid)}
        # + its control pipe and the breaker's two fds
        if len(fds) == len(want) + 3 or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert want <= fds and len(fds) == len(want) + 3, fds
    # The write ends of the watched pipes, the Launcher's end of the
    # control pipe and of the BREAK channel are the Launcher's, not its.
    for fd in (wk.pipes[0][1], wk.pipes[1][1], wk.ctrl, wk.lg.b.break_r, wk.lg.b.clear_w):
        assert fd not in fds


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
    sys.path.insert(0, %(tests)r)
    from devices.memory import GuestMemory
    from devices.devpage import DeviceList
    from devices.block import setup_block_file
    from waker import setup_waker
    from test_waker import FakeLg
    mem = GuestMemory(1 << 20)
    devices = DeviceList(mem)
    dev = setup_block_file(devices, sys.argv[1])
    setup_waker(FakeLg(), devices)
    print("ready", flush=True)
    how = sys.argv[2]
    if how == "exit":
        sys.exit(0)
    if how == "error":
        raise SystemExit(1)
    time.sleep(60)
""")


def _gone(pid):
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.parametrize("how", ["sigkill", "sigterm", "exit", "error"])
def test_no_orphans(tmp_path, how):
    img = tmp_path / "d.img"
    img.write_bytes(bytes(65536))
    script = tmp_path / "launcher_like.py"
    script.write_text(LAUNCHER_SCRIPT % {"root": str(ROOT), "tests": str(ROOT / "tests")})
    proc = subprocess.Popen([sys.executable, str(script), str(img), how],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "ready\n"
        kids = []
        if how in ("sigkill", "sigterm"):
            me = psutil.Process(proc.pid)
            kids = me.children(recursive=True)
            # Exactly Launcher + worker + Waker.
            assert len(kids) == 2, kids
            proc.send_signal(signal.SIGKILL if how == "sigkill" else signal.SIGTERM)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not all(_gone(k.pid) for k in kids):
            time.sleep(0.02)
        assert all(_gone(k.pid) for k in kids)
        # Nothing at all left behind that came from this script.
        left = [p for p in psutil.process_iter(["cmdline"])
                if p.info["cmdline"] and str(script) in " ".join(p.info["cmdline"])
                and not _gone(p.pid)]
        assert left == []
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
