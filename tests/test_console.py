"""The console (devices/console.py) through a real pseudo-terminal.

The Launcher runs with a pty as stdin and stdout, as it would in a terminal
window: we type into the master side and read what the Guest prints.  Our
Guest's `lgtest=console` mode echoes every line as "echo: LINE" until "quit".
Whatever way the Launcher ends, the terminal must get its modes back.
"""
import os
import signal
import subprocess
import termios
import threading
import time

import psutil
import pytest

from conftest import LAUNCHER, PYTHON, ROOT, assert_no_traceback

RAW_OFF = termios.ISIG | termios.ICANON | termios.ECHO


class PtyLauncher:
    """The Launcher on a fresh pty; .out accumulates what it printed."""

    def __init__(self, args):
        self.master, self.slave = os.openpty()
        self.modes_before = termios.tcgetattr(self.slave)
        self.proc = subprocess.Popen([PYTHON, str(LAUNCHER), *map(str, args)],
                                     stdin=self.slave, stdout=self.slave,
                                     stderr=subprocess.PIPE, cwd=ROOT,
                                     start_new_session=True)
        self._buf = bytearray()
        self._lock = threading.Lock()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        while True:
            try:
                data = os.read(self.master, 4096)
            except OSError:
                return
            if not data:
                return
            with self._lock:
                self._buf += data

    @property
    def out(self):
        with self._lock:
            return self._buf.decode(errors="replace")

    def wait_for(self, text, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.out:
                return
            if self.proc.poll() is not None:
                time.sleep(0.2)          # let the pump catch up
                if text in self.out:
                    return
                break
            time.sleep(0.02)
        raise AssertionError("%r not seen; output so far:\n%s" % (text, self.out))

    def type(self, text):
        os.write(self.master, text.encode() if isinstance(text, str) else text)

    def lflag(self):
        return termios.tcgetattr(self.slave)[3]

    def finish(self, timeout=30):
        """Wait for the Launcher; returns (status, stderr)."""
        try:
            status = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        # Its last lines may still be in the pty: let the pump read them (it sees no
        # end-of-file, as we hold the slave side open) until nothing new comes.
        seen, quiet = -1, time.monotonic()
        while time.monotonic() - quiet < 0.2:
            with self._lock:
                n = len(self._buf)
            if n != seen:
                seen, quiet = n, time.monotonic()
            time.sleep(0.02)
        err = self.proc.stderr.read().decode(errors="replace")
        return status, err

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass


@pytest.fixture
def pty_launcher(guest_elf):
    made = []

    def start(*args):
        p = PtyLauncher(args)
        made.append(p)
        return p
    yield start
    for p in made:
        p.close()


def test_typing_reaches_the_guest_and_echo_comes_back(pty_launcher):
    run = pty_launcher(64, "guest/guest.elf", "lgtest=console")
    run.wait_for("virtio console: up")
    # While the Guest runs, the terminal is raw: no echo, no line editing,
    # no signal keys (so ^C would go to the Guest).
    time.sleep(0.2)
    assert run.lflag() & RAW_OFF == 0
    run.type("hello, Guest\r")
    run.wait_for("echo: hello, Guest")
    run.type("second line\n")
    run.wait_for("echo: second line")
    # Nothing we typed was echoed by the terminal itself: only the Guest's
    # "echo: " lines contain it.
    assert run.out.count("hello, Guest") == 1
    run.type("quit\r")
    status, err = run.finish()
    assert "Traceback" not in err and "Traceback" not in run.out
    assert "lgtest console: PASS" in run.out
    assert status == 0, err
    assert termios.tcgetattr(run.slave) == run.modes_before


def test_three_ctrl_c_exit_with_status_2(pty_launcher):
    run = pty_launcher(64, "guest/guest.elf", "lgtest=console")
    run.wait_for("virtio console: up")
    time.sleep(0.2)
    kids = [c.pid for c in psutil.Process(run.proc.pid).children()]
    assert kids                                   # the Waker, at least
    for _ in range(3):
        run.type(b"\x03")
        time.sleep(0.15)
    status, err = run.finish(timeout=15)
    assert status == 2, (status, err, run.out)
    assert "Traceback" not in err
    assert "lgtest console" not in run.out        # the Guest never finished
    assert termios.tcgetattr(run.slave) == run.modes_before
    time.sleep(0.3)
    assert not [p for p in kids if psutil.pid_exists(p)
                and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


def test_ctrl_c_slower_than_a_second_goes_to_the_guest(pty_launcher):
    run = pty_launcher(64, "guest/guest.elf", "lgtest=console")
    run.wait_for("virtio console: up")
    # One ^C is just a key for the Guest; three spread over three seconds
    # are not the abort either.
    for _ in range(3):
        run.type(b"\x03")
        time.sleep(0.8)
    assert run.proc.poll() is None
    run.type("\rquit\r")
    status, err = run.finish()
    assert status == 0, (status, err, run.out)
    assert "lgtest console: PASS" in run.out


def test_sigterm_restores_the_terminal(pty_launcher):
    run = pty_launcher(64, "guest/guest.elf", "lgtest=console")
    run.wait_for("virtio console: up")
    time.sleep(0.2)
    assert run.lflag() & RAW_OFF == 0
    run.proc.send_signal(signal.SIGTERM)
    status, err = run.finish(timeout=15)
    assert status == 1
    assert err.strip() == "lguest: Killed by SIGTERM"
    assert termios.tcgetattr(run.slave) == run.modes_before


def test_guest_death_restores_the_terminal(pty_launcher):
    run = pty_launcher(64, "guest/guest.elf", "lgbad=hcall")
    status, err = run.finish()
    assert status == 1
    assert "Traceback" not in err
    assert err.startswith("lguest: ")
    assert termios.tcgetattr(run.slave) == run.modes_before


def test_error_before_the_guest_runs_restores_the_terminal(pty_launcher,
                                                         tmp_path):
    # The console (raw mode) is set up before the kernel is loaded, as in C.
    run = pty_launcher(64, tmp_path / "no-kernel")
    status, err = run.finish()
    assert status == 1
    assert err == "lguest: Failed to open %s: No such file or directory\n" \
        % (tmp_path / "no-kernel")
    assert termios.tcgetattr(run.slave) == run.modes_before


def test_stdin_dev_null(run_launcher):
    """End of input: warn once, stop watching stdin, and the Guest carries
    on (it just never gets console input)."""
    proc = run_launcher([64, "guest/guest.elf", "lgtest=timer"])
    assert_no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count(
        "lguest: Failed to get console input, ignoring console.") == 1
    assert "lgtest timer: PASS" in proc.stdout


def test_input_from_a_pipe(guest_elf):
    """Not a terminal: no raw mode to set, the lines still get through, and
    end of file afterwards is the same warning."""
    proc = subprocess.run([PYTHON, str(LAUNCHER), "64", "guest/guest.elf",
                           "lgtest=console"], input=b"one\ntwo\nquit\n",
                          capture_output=True, timeout=60, cwd=ROOT)
    out = proc.stdout.decode()
    assert proc.returncode == 0, proc.stderr
    assert "echo: one" in out and "echo: two" in out
    assert "lgtest console: PASS" in out
