"""The Launcher's own exits (issue 15): limits, closed streams, signals, other people's
processes, kernels with nothing to run, files that are not files.

Each ends the way every other death does: one "lguest: ..." line on stderr (or the
documented behaviour), status 1 (0 for a clean power-off), the terminal as it was,
nothing of the Launcher's left running, and nothing of anyone else's touched.
"""
import os
import re
import signal
import stat
import subprocess
import time

import pytest

from conftest import (LAUNCHER, PYTHON, ROOT, SPIN, TINY_INIT, Launcher, assert_no_traceback,
                      bzimage, elf32, hcall_code, last_words, lgtest_lines, make_image, one_line_death,
                      tiny_bzimage_guest)

HCALL = [64, "guest/guest.elf", "lgtest=hcall"]


def bash(script):
    """A prefix running script in bash, which must end with exec "$@"."""
    return ["bash", "-c", script, "bash"]


@pytest.fixture
def image(tmp_path):
    return make_image(tmp_path / "disk.img", 1 << 20, seed=15)


# --- 1. address-space limits ---------------------------------------------------------------

@pytest.mark.parametrize("limit", ["-v 150000", "-v 3000000", "-d 1000000"])
def test_address_space_limit_is_one_line_and_the_terminal_comes_back(guest_elf, image,
                                                                     limit):
    """unicorn reserves a 1 GiB code buffer per engine and exit(1)s when it can't: the
    Launcher must find out first, say so in one line, and leave the terminal cooked."""
    with Launcher([f"--block={image}", *HCALL], stdin="pty",
                  prefix=bash("ulimit %s && exec \"$@\"" % limit)) as run:
        proc = run.finish(60)
        line = one_line_death(proc, "unicorn")
        assert "address space" in line, line
        assert run.pty_modes() == run.modes_before


def test_a_limit_that_leaves_room_runs_the_guest(guest_elf):
    with Launcher(HCALL, prefix=bash("ulimit -v 8000000 && exec \"$@\"")) as run:
        proc = run.finish(60)
    assert proc.returncode == 0, proc.stderr
    assert lgtest_lines(proc.stdout).get("hcall") == "PASS"


# --- 2. closed standard streams ------------------------------------------------------------

def test_stdout_closed_is_one_line(guest_elf, image):
    """`>&-`: the first console write fails as a write to a closed fd does; nothing of
    ours may have taken fd 1 meanwhile (the disk image, say)."""
    before = image.read_bytes()
    with Launcher([f"--block={image}", *HCALL], prefix=bash('exec "$@" >&-')) as run:
        proc = run.finish(60)
    assert last_words(proc, 1) == "lguest: Writing console output: Bad file descriptor"
    assert image.read_bytes() == before


def test_stderr_closed_still_runs_the_guest(guest_elf, image):
    """`2>&-`: nowhere to complain, but the Guest runs and the status tells."""
    before = image.read_bytes()
    with Launcher([f"--block={image}", *HCALL], prefix=bash('exec "$@" 2>&-')) as run:
        proc = run.finish(60)
    assert proc.returncode == 0
    assert lgtest_lines(proc.stdout).get("hcall") == "PASS", proc.stdout
    assert image.read_bytes() == before
    with Launcher([64, "guest/guest.elf", "lgbad=hcall"],
                  prefix=bash('exec "$@" 2>&-')) as run:
        proc = run.finish(60)
    assert proc.returncode == 1
    assert "lgbad hcall: hypercall 99" in proc.stdout


@pytest.mark.parametrize("block", [False, True])
def test_stdin_closed_is_end_of_input(guest_elf, image, block):
    """`<&-`: the demo sees end of input at once and powers off, exactly as with
    </dev/null; fd 0 is nobody else's (not a pipe of ours, not the disk image)."""
    before = image.read_bytes()
    args = ([f"--block={image}"] if block else []) + [64, "guest/guest.elf"]
    with Launcher(args, prefix=bash('exec "$@" <&-')) as run:
        proc = run.finish(30)
    with Launcher(args) as run:
        reference = run.finish(30)
    assert_no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    assert "end of input" in proc.stdout
    def steady(out):                         # all but the measured TSC rate
        return [line for line in out.splitlines() if not line.startswith("TSC:")]
    assert steady(proc.stdout) == steady(reference.stdout)
    assert "lguest: Failed to get console input, ignoring console." in proc.stderr
    assert image.read_bytes() == before


# --- 3. only our own children ---------------------------------------------------------------

@pytest.mark.parametrize("guest_args, status", [(["lgtest=hcall"], 0), (["lgbad=hcall"], 1)])
def test_a_child_the_launcher_did_not_start_is_left_alone(guest_elf, image, tmp_path,
                                                          guest_args, status):
    """`bash -c 'sleep 120 & exec launcher.py ...'`: the sleep is the Launcher's child by
    inheritance, not its to end."""
    pidfile = tmp_path / "sleep.pid"
    script = ("PYLGUEST_TEST_TAG=not-ours sleep 120 & echo $! > %s; exec \"$@\""
              % pidfile)
    with Launcher([f"--block={image}", 64, "guest/guest.elf", *guest_args],
                  prefix=bash(script)) as run:
        proc = run.finish(60)
    sleeper = int(pidfile.read_text())
    try:
        assert proc.returncode == status, proc.stderr
        assert_no_traceback(proc)
        with open("/proc/%d/stat" % sleeper) as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        assert state not in ("Z", "X"), "the Launcher ended a process it did not start"
    finally:
        try:
            os.kill(sleeper, signal.SIGKILL)
        except OSError:
            pass


# --- 4. signals during start-up ----------------------------------------------------------------

def signals_taken(pid):
    """Whether the Launcher's own code has taken charge of SIGTERM (blocked or caught):
    before that, Python is still starting and the default action is all there is."""
    try:
        with open("/proc/%d/status" % pid) as f:
            fields = dict(l.split(":", 1) for l in f if ":" in l)
    except OSError:
        return True
    bit = 1 << (signal.SIGTERM - 1)
    return bool((int(fields["SigBlk"], 16) | int(fields["SigCgt"], 16)) & bit)


def signal_masks(pid):
    """(SigBlk of the main thread, SigCgt of the process) from /proc, or None."""
    try:
        with open("/proc/%d/status" % pid) as f:
            fields = dict(l.split(":", 1) for l in f if ":" in l)
        return int(fields["SigBlk"], 16), int(fields["SigCgt"], 16)
    except (OSError, KeyError, ValueError):
        return None


def test_no_python_handler_can_fire_during_start_up(guest_elf, image):
    """Why the storm below can't hurt: from the moment the Launcher's code takes
    its signals until the Guest runs, they are blocked in the main thread (for the
    signal thread's sigwait) and no Python handler is installed for them, so none
    can land in an import or in the way out.  (Python's own SIGINT handler is
    there, but blocked.)  The C's: no handler at all."""
    bit = {sig: 1 << (sig - 1) for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                                            signal.SIGINT)}
    with Launcher([f"--block={image}", 64, "guest/guest.elf"], stdin="pty") as run:
        samples = []
        deadline = time.monotonic() + 30
        while "pylguest>" not in run.out and time.monotonic() < deadline:
            m = signal_masks(run.pid)
            if m and (m[0] | m[1]) & bit[signal.SIGTERM]:
                samples.append(m)
            time.sleep(0.0005)
        assert "pylguest>" in run.out
        assert samples
        for blocked, caught in samples:
            for sig, b in bit.items():
                assert blocked & b, "%s unblocked during start-up" % sig.name
                if sig != signal.SIGINT:
                    assert not caught & b, "a Python handler for %s" % sig.name


DEATHS = {"lguest: Killed by SIGTERM": 1, "lguest: Interrupted": 2,
          "lguest: Killed by SIGHUP": 1, "lguest: Killed by SIGQUIT": 1}


@pytest.mark.parametrize("delay", [i * 0.02 for i in range(13)])
def test_signals_close_together_during_start_up(guest_elf, image, delay):
    """TERM, INT and HUP within a millisecond, again and again for 50 ms, from the
    moment the Launcher's code has taken its signals (or a while after): the first
    one wins, the rest must not interrupt the way out."""
    with Launcher([f"--block={image}", 64, "guest/guest.elf"], stdin="pty") as run:
        deadline = time.monotonic() + 20
        while not signals_taken(run.pid) and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(delay)
        # As fast as we can send them, for 50 ms: the first lands wherever it
        # lands, the others in the way out.
        end = time.monotonic() + 0.05
        while time.monotonic() < end and run.proc.poll() is None:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                try:
                    os.kill(run.pid, sig)
                except ProcessLookupError:
                    break
        proc = run.finish(30)
        line = one_line_death(proc, "", status=proc.returncode)
        assert DEATHS.get(line) == proc.returncode, (line, proc.returncode)
        assert run.pty_modes() == run.modes_before


@pytest.mark.parametrize("sig, line", [(signal.SIGINT, "lguest: Interrupted"),
                                       (signal.SIGHUP, "lguest: Killed by SIGHUP"),
                                       (signal.SIGQUIT, "lguest: Killed by SIGQUIT"),
                                       (signal.SIGTERM, "lguest: Killed by SIGTERM")])
def test_each_signal_while_the_guest_runs(guest_elf, image, sig, line):
    with Launcher([f"--block={image}", 64, "guest/guest.elf"], stdin="pty") as run:
        run.wait_for("pylguest>")
        assert len(run.children()) == 2          # the Waker and the block worker
        run.signal(sig)
        proc = run.finish(30)
        assert one_line_death(proc, "", status=DEATHS[line]) == line
        assert run.pty_modes() == run.modes_before


# --- 5. file-descriptor limits, missing modules -------------------------------------------------

@pytest.mark.parametrize("n", [6, 8, 10, 11, 12])
def test_fd_limit_is_the_real_error_or_a_clean_run(guest_elf, image, n):
    with Launcher([f"--block={image}", *HCALL], prefix=bash("ulimit -n %d && exec \"$@\"" % n),
                  stdin="pty") as run:
        proc = run.finish(60)
        assert run.pty_modes() == run.modes_before
    if proc.returncode == 0:
        assert lgtest_lines(proc.stdout).get("hcall") == "PASS", proc.stdout
        assert last_words(proc) == "lguest: CRASH: Power down"
    else:
        line = one_line_death(proc, "Too many open files")
        assert "internal error" not in line


def test_missing_module_says_how_to_run_it(guest_elf):
    """`python3 launcher.py` outside the venv: -S leaves out site-packages."""
    with Launcher(HCALL, python=(PYTHON, "-S")) as run:
        proc = run.finish(30)
    line = one_line_death(proc, ".venv/bin/python")
    assert "unicorn" in line or "elftools" in line, line


# --- 6. inherited SIG_IGN -------------------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGINT, signal.SIGQUIT])
def test_an_ignored_signal_stays_ignored(guest_elf, sig):
    """nohup (SIGHUP), or a background job of a script (SIGINT, SIGQUIT): the C
    Launcher kept what it inherited, and so must we."""
    name = signal.Signals(sig).name[3:]
    with Launcher([64, "guest/guest.elf"], stdin=subprocess.PIPE,
                  prefix=bash("trap '' %s; exec \"$@\"" % name)) as run:
        run.wait_for("pylguest>")
        run.signal(sig)
        time.sleep(0.3)
        run.write("still here\n")
        run.wait_for("still here")
        run.write("poweroff\n")
        proc = run.finish(30)
    assert proc.returncode == 0, proc.stderr
    assert last_words(proc) == "lguest: CRASH: Power down"


# --- 7. kernels with nothing to run -------------------------------------------------------------------

NOTHING = {
    "elf-no-load": (elf32([(4, 0, b"NOTE", 4)], 0x1000000), "outside every loaded segment"),
    "elf-entry-outside": (elf32([(1, 0x1000000, b"\x90" * 4096, 4096)], 0x2000000),
                          "outside every loaded segment"),
    "elf-entry-in-bss": (elf32([(1, 0x1000000, b"\x90" * 16, 0x10000)], 0x1008000),
                         "outside every loaded segment"),
    "bz-empty": (bzimage(b""), "no payload"),
    "bz-zeros": (bzimage(bytes(1 << 20)), "all zeros"),
    "bz-entry-outside": (bzimage(b"\x90" * 4096, code32_start=0x300000),
                         "outside its payload"),
}


@pytest.mark.parametrize("what", sorted(NOTHING))
def test_a_kernel_with_nothing_to_run_is_refused_at_load_time(tmp_path, what):
    data, words = NOTHING[what]
    (tmp_path / "k").write_bytes(data)
    with Launcher([64, tmp_path / "k"]) as run:
        proc = run.finish(20)
    one_line_death(proc, words)


def test_a_tiny_kernel_still_runs(tmp_path):
    """The checks above let a real (if tiny) payload through."""
    code = TINY_INIT + hcall_code(2, 0x100100, 1) + SPIN
    (tmp_path / "k").write_bytes(tiny_bzimage_guest(code, data=b"Power down\0"))
    with Launcher([16, tmp_path / "k"]) as run:
        proc = run.finish(30)
    assert proc.returncode == 0, proc.stderr
    assert last_words(proc) == "lguest: CRASH: Power down"


# --- 8. files that are not files ------------------------------------------------------------------

@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return path


def test_fifo_as_kernel(fifo):
    with Launcher([64, fifo]) as run:
        proc = run.finish(20)
    one_line_death(proc, "Reading kernel: Illegal seek")


def test_fifo_as_initrd(guest_elf, fifo):
    with Launcher(["--initrd=%s" % fifo, *HCALL]) as run:
        proc = run.finish(20)
    line = one_line_death(proc, str(fifo))
    assert "not a regular file" in line, line


@pytest.mark.parametrize("kind", ["fifo", "proc", "pipe"])
def test_block_file_that_cannot_be_seeked(guest_elf, tmp_path, fifo, image, kind):
    if kind == "pipe":                       # bash's <(cat img)
        with Launcher(['--block=/dev/fd/3', *HCALL],
                      prefix=bash('exec "$@" 3< <(cat %s)' % image)) as run:
            proc = run.finish(20)
    else:
        target = fifo if kind == "fifo" else "/proc/self/comm"
        with Launcher(["--block=%s" % target, *HCALL]) as run:
            proc = run.finish(20)
    line = one_line_death(proc, "")
    assert "internal error" not in line, line
    assert re.search(r"block|Block", line), line
