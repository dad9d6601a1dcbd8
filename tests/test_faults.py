"""Fault injection, end to end (issue 8): kill the block worker, kill the Waker,
close stdin, fill the disk.  Each ends cleanly, says why, and leaves nothing
behind; a full disk is the Guest's IOERR, not the Launcher's death."""
import os
import signal
import subprocess
import tempfile

import psutil
import pytest

from conftest import (SPIN, TINY_INIT, Launcher, bzimage, gone_within, hcall_code, last_words,
                      make_image, tiny_bzimage_guest)

IMAGE = 4 << 20


def stress_run(image, secs=30):
    return Launcher([f"--block={image}", 64, "guest/guest.elf", "lgtest=blk-stress",
                     "lgblk=0:4096", f"lgstress_secs={secs}", "lgchatter=100"])


def worker_and_waker(run):
    """(worker, waker) pids of a running Launcher with one block device.

    The worker is forked first (setup_block_file, during option parsing), the Waker
    after LHREQ_INITIALIZE: the older child is the worker."""
    kids = sorted(run.children(), key=lambda pid: psutil.Process(pid).create_time())
    assert len(kids) == 2, kids
    return kids[0], kids[1]


@pytest.fixture
def image(tmp_path):
    return make_image(tmp_path / "disk.img", IMAGE, seed=8)


def test_killed_worker_ends_the_launcher_cleanly(guest_elf, image):
    before = image.read_bytes()
    with stress_run(image) as run:
        run.wait_for("blk-stress: t=")
        worker, waker = worker_and_waker(run)
        os.kill(worker, signal.SIGKILL)
        proc = run.finish(10)
    assert "worker" in last_words(proc, 1)
    assert gone_within([waker], 1.0)
    # Nothing outside the range the Guest may write (the first 2 MiB) changed.
    after = image.read_bytes()
    assert len(after) == IMAGE and after[IMAGE // 2:] == before[IMAGE // 2:]


def test_killed_waker_ends_the_launcher_cleanly(guest_elf, image):
    with stress_run(image) as run:
        run.wait_for("blk-stress: t=")
        worker, waker = worker_and_waker(run)
        os.kill(waker, signal.SIGKILL)
        proc = run.finish(10)
    assert last_words(proc, 1).startswith("lguest: The Waker process died")
    assert gone_within([worker], 1.0)


def test_stdin_closed_mid_session(guest_elf, image):
    """The demo powers off when the console input ends, even mid-session."""
    with Launcher([f"--block={image}", 64, "guest/guest.elf"], stdin=subprocess.PIPE) as run:
        run.wait_for("pylguest>")
        run.write("one line\n")
        run.wait_for("one line")
        run.close_stdin()
        proc = run.finish(20)
    assert proc.returncode == 0, proc.stderr
    assert "lguest: Failed to get console input, ignoring console." in proc.stderr
    assert last_words(proc) == "lguest: CRASH: Power down"


@pytest.fixture
def tiny_fs():
    """A 1 MiB tmpfs: a bigger sparse image on it runs out of room mid-write."""
    d = tempfile.mkdtemp(prefix="pylguest-enospc-")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", d],
                       capture_output=True, text=True)
    if r.returncode != 0:
        os.rmdir(d)
        pytest.skip("cannot mount a tmpfs here: " + r.stderr.strip())
    try:
        yield d
    finally:
        subprocess.run(["umount", d])
        os.rmdir(d)


@pytest.mark.root
def test_full_disk_is_ioerr_for_the_guest(run_launcher, tiny_fs):
    image = os.path.join(tiny_fs, "sparse.img")
    with open(image, "wb") as f:
        f.truncate(8 << 20)                    # 8 MiB image on a 1 MiB filesystem
    proc = run_launcher([f"--block={image}", 64, "guest/guest.elf", "lgtest=blk-write",
                         "lgblk=0:16384"])
    assert "Traceback" not in proc.stderr
    # The Launcher lives on; the Guest sees an I/O error status (1) and says so.
    verdict = [l for l in proc.stdout.splitlines() if l.startswith("lgtest blk-write:")]
    assert verdict and verdict[0].startswith("lgtest blk-write: FAIL"), proc.stdout
    assert "status 1" in verdict[0], verdict
    assert proc.returncode == 0, proc.stderr
    assert os.path.getsize(image) == 8 << 20


@pytest.mark.parametrize("seed", range(12))
def test_garbage_guest_dies_in_one_line(tmp_path, seed):
    """Random code as the Guest: it dies, by itself, with the Host's reason in one
    line, and never a traceback.  (These seeds all die within a second; one that
    took a signal from us to end would prove nothing about the Host.)"""
    import random
    kernel = tmp_path / "garbage.bz"
    kernel.write_bytes(bzimage(random.Random(seed).randbytes(8192), setup_sects=4))
    with Launcher([16, kernel]) as run:
        proc = run.finish(60)
    line = last_words(proc, 1)
    assert "Killed by" not in line and "internal error" not in line, line


def test_a_spinning_guest_still_ends_on_sigterm(tmp_path):
    """A Guest spinning in "jmp ." makes no hypercall: the signal thread, not the
    main one (deep in the emulator), gets the terminal back and the line out."""
    code = TINY_INIT + hcall_code(17, 0x100100) + SPIN      # early console, then spin
    (tmp_path / "k").write_bytes(tiny_bzimage_guest(code, data=b"spinning\n\0"))
    with Launcher([16, tmp_path / "k"], stdin="pty") as run:
        run.wait_for("spinning")
        run.signal(signal.SIGTERM)
        proc = run.finish(20)
        assert proc.returncode == 1
        assert proc.stderr == "lguest: Killed by SIGTERM\n"
        assert run.pty_modes() == run.modes_before
