"""Process shape and lifetimes (issue 6): Launcher + Waker + block worker while
the Guest runs, and nobody left behind after any way of ending."""
import os
import queue
import signal
import subprocess
import threading
import time

import psutil
import pytest

from conftest import LAUNCHER, PYTHON, ROOT, make_image


class Running:
    """A Launcher started in the background, with its stdout read line by line."""

    def __init__(self, args, stdin=subprocess.PIPE):
        self.proc = subprocess.Popen([PYTHON, str(LAUNCHER), *map(str, args)], cwd=ROOT,
                                     stdin=stdin, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.lines = queue.Queue()
        self.seen = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.proc.stdout:
            self.lines.put(line)

    def wait_for(self, text, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            self.seen.append(line)
            if text in line:
                return line
        raise AssertionError(f"{text!r} not seen; got {''.join(self.seen)!r}")

    def children(self):
        return psutil.Process(self.proc.pid).children(recursive=True)


def gone_within(pids, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        alive = [p for p in pids if psutil.pid_exists(p) and
                 psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def image(tmp_path):
    return make_image(tmp_path / "disk.img", 4 << 20, seed=6)


def test_three_processes_then_none(guest_elf, image):
    run = Running([f"--block={image}", 64, "guest/guest.elf"])
    try:
        run.wait_for("pylguest>")
        kids = run.children()
        assert len(kids) == 2, kids            # the Waker and the block worker
        pids = [k.pid for k in kids]
        run.proc.stdin.write("poweroff\n")
        run.proc.stdin.flush()
        assert run.proc.wait(timeout=20) == 0
        assert gone_within(pids, 1.0)
    finally:
        run.proc.kill()


def test_sigkill_mid_stress_leaves_no_child_and_no_longer_image(guest_elf, image):
    size = image.stat().st_size
    run = Running([f"--block={image}", 64, "guest/guest.elf",
                   "lgtest=blk-stress", "lgblk=0:4096", "lgstress_secs=30"],
                  stdin=subprocess.DEVNULL)
    try:
        time.sleep(2.0)                        # well into the stress run
        kids = run.children()
        assert len(kids) == 2, kids
        pids = [k.pid for k in kids]
        os.kill(run.proc.pid, signal.SIGKILL)
        run.proc.wait(timeout=5)
        assert gone_within(pids, 1.0)
        assert image.stat().st_size == size
    finally:
        run.proc.kill()


def test_sigterm_ends_everything(guest_elf, image):
    run = Running([f"--block={image}", 64, "guest/guest.elf"])
    try:
        run.wait_for("pylguest>")
        pids = [k.pid for k in run.children()]
        run.proc.terminate()
        assert run.proc.wait(timeout=10) != 0
        assert gone_within(pids, 1.0)
        assert "Traceback" not in run.proc.stderr.read()
    finally:
        run.proc.kill()


def test_guest_death_ends_children(guest_elf, image):
    run = Running([f"--block={image}", 64, "guest/guest.elf", "lgbad=hcall"],
                  stdin=subprocess.DEVNULL)
    try:
        assert run.proc.wait(timeout=30) == 1
        err = run.proc.stderr.read()
        assert "Bad hypercall 99" in err
    finally:
        run.proc.kill()
    # Any child of the dead Launcher would have been re-parented: look for
    # processes still running our launcher.py command line.
    time.sleep(0.5)
    leftovers = [p for p in psutil.process_iter(["cmdline", "ppid"])
                 if p.info["cmdline"] and str(LAUNCHER) in " ".join(p.info["cmdline"])
                 and "lgbad=hcall" in " ".join(p.info["cmdline"])]
    assert leftovers == []
