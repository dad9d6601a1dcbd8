"""The console (devices/console.py) through a real pseudo-terminal.

The Launcher runs with a pty as stdin and stdout, as it would in a terminal
window: we type into the master side and read what the Guest prints.  Our
Guest's `lgtest=console` mode echoes every line as "echo: LINE" until "quit".
Whatever way the Launcher ends, the terminal must get its modes back.
"""
import signal
import termios
import time

import pytest

from conftest import Launcher, assert_no_traceback, gone_within, launch, last_words

RAW_OFF = termios.ISIG | termios.ICANON | termios.ECHO


@pytest.fixture
def pty_launcher(guest_elf):
    """Start Launchers on fresh pseudo-terminals; all gone after the test."""
    made = []

    def start(*args):
        run = Launcher(args, stdin="pty")
        made.append(run)
        return run
    yield start
    for run in made:
        run.__exit__(None, None, None)


def lflag(run):
    return run.pty_modes()[3]


def test_typing_reaches_the_guest_and_echo_comes_back(pty_launcher):
    run = pty_launcher(64, "guest/guest.elf", "lgtest=console")
    run.wait_for("virtio console: up")
    # While the Guest runs, the terminal is raw: no echo, no line editing,
    # no signal keys (so ^C would go to the Guest).
    deadline = time.monotonic() + 10
    while lflag(run) & RAW_OFF and time.monotonic() < deadline:
        time.sleep(0.01)
    assert lflag(run) & RAW_OFF == 0
    run.write("hello, Guest\r")
    run.wait_for("echo: hello, Guest")
    run.write("second line\n")
    run.wait_for("echo: second line")
    # Nothing we typed was echoed by the terminal itself: only the Guest's
    # "echo: " lines contain it.
    assert run.out.count("hello, Guest") == 1
    run.write("quit\r")
    proc = run.finish()
    assert_no_traceback(proc)
    assert "lgtest console: PASS" in proc.stdout
    assert proc.returncode == 0, proc.stderr
    assert run.pty_modes() == run.modes_before


def test_three_ctrl_c_exit_with_status_2(pty_launcher):
    run = pty_launcher(64, "guest/guest.elf", "lgtest=console")
    run.wait_for("virtio console: up")
    kids = run.children()
    assert kids                                   # the Waker, at least
    for _ in range(3):
        run.write(b"\x03")
        time.sleep(0.15)
    proc = run.finish(15)
    assert proc.returncode == 2, (proc.returncode, proc.stderr, proc.stdout)
    assert_no_traceback(proc)
    assert "lgtest console" not in proc.stdout    # the Guest never finished
    assert run.pty_modes() == run.modes_before
    assert gone_within(kids, 1.0)


def test_ctrl_c_slower_than_a_second_goes_to_the_guest(pty_launcher):
    """One ^C is just a key for the Guest; three spread over 2.4 s are not the
    abort either (the window is 1.5 s: each ^C could reach the Launcher up to
    0.9 s late, as on a loaded machine, and this would still hold)."""
    run = pty_launcher(64, "guest/guest.elf", "lgtest=console")
    run.wait_for("virtio console: up")
    for _ in range(3):
        run.write(b"\x03")
        time.sleep(1.2)
    assert run.proc.poll() is None
    run.write("\rquit\r")
    proc = run.finish()
    assert proc.returncode == 0, (proc.returncode, proc.stderr, proc.stdout)
    assert "lgtest console: PASS" in proc.stdout


def test_sigterm_restores_the_terminal(pty_launcher):
    run = pty_launcher(64, "guest/guest.elf", "lgtest=console")
    run.wait_for("virtio console: up")
    deadline = time.monotonic() + 10
    while lflag(run) & RAW_OFF and time.monotonic() < deadline:
        time.sleep(0.01)
    assert lflag(run) & RAW_OFF == 0
    run.signal(signal.SIGTERM)
    proc = run.finish(15)
    assert proc.returncode == 1
    assert proc.stderr == "lguest: Killed by SIGTERM\n"
    assert run.pty_modes() == run.modes_before


def test_guest_death_restores_the_terminal(pty_launcher):
    run = pty_launcher(64, "guest/guest.elf", "lgbad=hcall")
    proc = run.finish()
    assert last_words(proc, 1) == "lguest: Bad hypercall 99"
    assert run.pty_modes() == run.modes_before


def test_error_before_the_guest_runs_leaves_the_terminal_alone(pty_launcher, tmp_path):
    run = pty_launcher(64, tmp_path / "no-kernel")
    proc = run.finish()
    assert proc.returncode == 1
    assert proc.stderr == "lguest: Failed to open %s: No such file or directory\n" \
        % (tmp_path / "no-kernel")
    assert run.pty_modes() == run.modes_before


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
    proc = launch([64, "guest/guest.elf", "lgtest=console"], input=b"one\ntwo\nquit\n")
    assert proc.returncode == 0, proc.stderr
    assert "echo: one" in proc.stdout and "echo: two" in proc.stdout
    assert "lgtest console: PASS" in proc.stdout
