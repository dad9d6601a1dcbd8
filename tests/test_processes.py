"""Process shape and lifetimes (issue 6): Launcher + Waker + block worker while
the Guest runs, and nobody left behind after any way of ending (every Launcher
run through conftest's helper fails on a process of its own still running after
it exited; these tests make sure there were processes to leave)."""
import os
import signal
import subprocess

import pytest

from conftest import Launcher, gone_within, last_words, make_image

IMAGE = 4 << 20
#: The sectors the stress run may write: the first half of the image.
STRESS = ["lgtest=blk-stress", "lgblk=0:4096", "lgstress_secs=30", "lgchatter=100"]


@pytest.fixture
def image(tmp_path):
    return make_image(tmp_path / "disk.img", IMAGE, seed=6)


def test_three_processes_then_none(guest_elf, image):
    with Launcher([f"--block={image}", 64, "guest/guest.elf"], stdin=subprocess.PIPE) as run:
        run.wait_for("pylguest>")
        kids = run.children()
        assert len(kids) == 2, kids            # the Waker and the block worker
        run.write("poweroff\n")
        assert run.finish(20).returncode == 0
    assert gone_within(kids, 1.0)


def test_sigkill_mid_stress_leaves_no_child_and_writes_only_its_range(guest_elf, image):
    """SIGKILL while requests are in flight: the children follow at once
    (PDEATHSIG), and the image changed only where the Guest may write."""
    before = image.read_bytes()
    half = IMAGE // 2
    with Launcher([f"--block={image}", 64, "guest/guest.elf", *STRESS]) as run:
        run.wait_for("blk-stress: t=")
        run.wait_for("blk-stress: t=")     # well into the stress run
        kids = run.children()
        assert len(kids) == 2, kids
        run.signal(signal.SIGKILL)
        proc = run.finish(10)
    assert proc.returncode == -signal.SIGKILL
    assert gone_within(kids, 1.0)
    after = image.read_bytes()
    assert len(after) == IMAGE
    assert after[half:] == before[half:]
    assert after[:half] != before[:half]       # it really was writing


def test_sigterm_ends_everything(guest_elf, image):
    with Launcher([f"--block={image}", 64, "guest/guest.elf"], stdin=subprocess.PIPE) as run:
        run.wait_for("pylguest>")
        kids = run.children()
        run.signal(signal.SIGTERM)
        proc = run.finish(10)
    assert proc.returncode == 1
    assert last_words(proc) == "lguest: Killed by SIGTERM"
    assert gone_within(kids, 1.0)


@pytest.mark.parametrize("args, words", [
    (["lgbad=hcall"], "lguest: Bad hypercall 99"),                 # the Guest dies
    (["lgbad=blk-loop"], "lguest: Looped descriptor"),             # the worker dies
    (["lgbad=notify"], None),                                      # the Launcher says why
])
def test_late_deaths_leave_nothing(guest_elf, image, args, words):
    """Deaths after both children exist: each is reported in one line and ends
    them (the Launcher helper fails on any process of ours still running)."""
    with Launcher([f"--block={image}", 64, "guest/guest.elf", *args]) as run:
        proc = run.finish(30)
    line = last_words(proc, 1)
    if words:
        assert line == words
    assert "lgbad" in proc.stdout


def test_error_after_the_worker_is_forked_leaves_nothing(tmp_path, image):
    """A bad kernel is found after the block worker exists: it must go too."""
    (tmp_path / "k").write_bytes(b"not a kernel" * 100)
    with Launcher([f"--block={image}", f"--block={image}", 64, tmp_path / "k"]) as run:
        proc = run.finish(30)
    assert last_words(proc, 1) == "lguest: This doesn't look like a bzImage to me"


def test_restart_execs_the_launcher_again(tmp_path, image):
    """LGUEST_SHUTDOWN_RESTART: the Launcher re-executes itself with the same
    arguments (as the 3.16 one did), in the same process, after ending the
    children of the first life; a signal still ends it afterwards."""
    from conftest import TINY_INIT, hcall_code, tiny_bzimage_guest
    code = TINY_INIT + hcall_code(2, 0x100100, 2) + b"\xEB\xFE"   # SHUTDOWN(RESTART)
    (tmp_path / "k").write_bytes(tiny_bzimage_guest(code, data=b"Reboot\0"))
    with Launcher(["--verbose", f"--block={image}", 16, tmp_path / "k"]) as run:
        first = run.wait_for("Guest base is at")
        run.wait_for("Guest base is at")
        run.wait_for("Guest base is at")           # a third life
        assert len(run.children()) <= 2              # the previous lives' are gone
        pid = run.pid
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            assert b"launcher.py" in f.read()        # the same process, exec'd
        run.signal(signal.SIGTERM)
        proc = run.finish(20)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines()[-1] == "lguest: Killed by SIGTERM"
    assert "Traceback" not in proc.stderr
    assert first.startswith("Guest base is at")
    assert os.path.getsize(image) == IMAGE


def test_the_leftover_check_can_fail(tmp_path):
    """conftest's check is real: a process running our launcher.py with the run's
    tag, still there after the started process exited, fails finish()."""
    from conftest import SPIN, TINY_INIT, tiny_bzimage_guest
    (tmp_path / "k").write_bytes(tiny_bzimage_guest(TINY_INIT + SPIN))
    with Launcher([16, tmp_path / "k"],
                  prefix=["bash", "-c", '"$@" </dev/null >/dev/null 2>&1 & sleep 1', "bash"]) as run:
        with pytest.raises(AssertionError, match="left processes running"):
            run.finish(30)
        assert run.leftovers(5) == []          # finish() killed it, by pid
