"""Shared fixtures: where things are, and how to run the Launcher as a user would.

Every end-to-end test runs `launcher.py` as a separate process, exactly as the
README tells a user to, and judges only what the Guest and the user see:
stdout, stderr, the exit status, the disk image, the processes left behind.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAUNCHER = ROOT / "launcher.py"
GUEST = ROOT / "guest" / "guest.elf"
GUEST_PAE = ROOT / "guest" / "guest-pae.elf"      # the same Guest with PAE page tables
PYTHON = sys.executable

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def build_guest():
    """Build guest/guest.elf and guest-pae.elf (make -C guest) if one is missing;
    returns guest.elf's path."""
    if not GUEST.exists() or not GUEST_PAE.exists():
        subprocess.run(["make", "-s", "-C", str(ROOT / "guest")], check=True)
    return GUEST


@pytest.fixture(scope="session")
def guest_elf():
    return build_guest()


def launch(args, *, input=None, timeout=60, stdin=None, env=None):
    """Run the Launcher with `args` (a list of str); returns CompletedProcess (text).

    stdin defaults to /dev/null so the console sees end of input, as a
    non-interactive user's would.  A Launcher that outlives `timeout` seconds
    is a hang, and a hang is a failure.
    """
    if input is None and stdin is None:
        stdin = subprocess.DEVNULL
    return subprocess.run([PYTHON, str(LAUNCHER), *map(str, args)], input=input,
                          stdin=stdin, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)


@pytest.fixture
def run_launcher(guest_elf):
    return launch


def make_image(path, size, *, seed=None):
    """Write a disk image of `size` bytes: random bytes from `seed`, or zeros."""
    import random
    if seed is None:
        data = bytes(size)
    else:
        data = random.Random(seed).randbytes(size)
    Path(path).write_bytes(data)
    return Path(path)


def lgtest_lines(stdout):
    """{name: 'PASS' | 'FAIL ...' | 'SKIP ...'} from the Guest's lgtest lines."""
    out = {}
    for line in stdout.splitlines():
        if line.startswith("lgtest ") and ": " in line:
            name, verdict = line[len("lgtest "):].split(": ", 1)
            out[name] = verdict.strip()
    return out


def assert_no_traceback(proc):
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stdout, proc.stdout


def wait_child_exit(pid, timeout, what):
    """Wait up to timeout seconds for our child pid to end; returns its exit
    status (negative: killed by that signal).  A child still running then is a
    failure naming `what`."""
    import time
    from waker import procs
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, st = os.waitpid(pid, os.WNOHANG)
        if done:
            procs.CHILDREN.pop(pid, None)
            return os.waitstatus_to_exitcode(st)
        time.sleep(0.01)
    raise AssertionError("%s still running" % what)
