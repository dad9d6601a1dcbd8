"""Fault injection, end to end (issue 8): kill the block worker, kill the Waker,
close stdin, fill the disk.  Each ends cleanly, says why, and leaves nothing
behind; a full disk is the Guest's IOERR, not the Launcher's death."""
import os
import signal
import subprocess
import tempfile
import time

import psutil
import pytest

from conftest import make_image
from test_processes import Running, gone_within


def stress_run(image, secs=30):
    return Running([f"--block={image}", 64, "guest/guest.elf", "lgtest=blk-stress",
                    "lgblk=0:4096", f"lgstress_secs={secs}"], stdin=subprocess.DEVNULL)


def worker_and_waker(run):
    """(worker, waker) psutil processes of a running Launcher with one block device.

    The worker is forked first (setup_block_file, during option parsing), the Waker
    after LHREQ_INITIALIZE: the older child is the worker."""
    kids = sorted(run.children(), key=lambda p: p.create_time())
    assert len(kids) == 2, kids
    return kids[0], kids[1]


@pytest.fixture
def image(tmp_path):
    return make_image(tmp_path / "disk.img", 4 << 20, seed=8)


def test_killed_worker_ends_the_launcher_cleanly(guest_elf, image):
    size = image.stat().st_size
    run = stress_run(image)
    try:
        run.wait_for("virtio console: up")
        time.sleep(1.0)
        worker, waker = worker_and_waker(run)
        os.kill(worker.pid, signal.SIGKILL)
        assert run.proc.wait(timeout=10) == 1
        err = run.proc.stderr.read()
        assert "Traceback" not in err
        lines = [l for l in err.splitlines() if l.startswith("lguest: ")]
        assert any("worker" in l for l in lines), err
        assert gone_within([waker.pid], 1.0)
        assert image.stat().st_size == size
    finally:
        run.proc.kill()


def test_killed_waker_ends_the_launcher_cleanly(guest_elf, image):
    run = stress_run(image)
    try:
        run.wait_for("virtio console: up")
        time.sleep(1.0)
        worker, waker = worker_and_waker(run)
        os.kill(waker.pid, signal.SIGKILL)
        assert run.proc.wait(timeout=10) == 1
        err = run.proc.stderr.read()
        assert "Traceback" not in err
        assert "lguest: The Waker process died" in err, err
        assert gone_within([worker.pid], 1.0)
    finally:
        run.proc.kill()


def test_stdin_closed_mid_session(guest_elf, image):
    """The demo powers off when the console input ends, even mid-session."""
    run = Running([f"--block={image}", 64, "guest/guest.elf"])
    try:
        run.wait_for("pylguest>")
        pids = [k.pid for k in run.children()]
        run.proc.stdin.write("one line\n")
        run.proc.stdin.flush()
        run.wait_for("one line")
        run.proc.stdin.close()
        assert run.proc.wait(timeout=20) == 0
        err = run.proc.stderr.read()
        assert "Failed to get console input, ignoring console." in err
        assert "Traceback" not in err
        assert gone_within(pids, 1.0)
    finally:
        run.proc.kill()


@pytest.fixture
def tiny_fs():
    """A 1 MiB tmpfs: a bigger sparse image on it runs out of room mid-write."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
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


def random_bzimage(path, seed, size=8192):
    """A bzImage header in front of random bytes: the Guest runs garbage."""
    import random
    import struct
    setup_sects = 4
    hdr = bytearray(512 * (setup_sects + 1))
    hdr[0x1F1] = setup_sects
    hdr[0x202:0x206] = b"HdrS"
    struct.pack_into("<I", hdr, 0x214, 0x100000)          # code32_start
    path.write_bytes(bytes(hdr) + random.Random(seed).randbytes(size))
    return path


@pytest.mark.parametrize("seed", range(12))
def test_garbage_guest_dies_in_one_line(tmp_path, seed):
    """Random code as the Guest: it dies with the Host's reason (or runs until we
    stop it), and the Launcher never shows a traceback."""
    kernel = random_bzimage(tmp_path / "garbage.bz", seed)
    run = Running([16, kernel], stdin=subprocess.DEVNULL)
    try:
        try:
            status = run.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:      # garbage that happens to spin
            run.proc.terminate()
            status = run.proc.wait(timeout=5)
        err = run.proc.stderr.read()
        assert status == 1, err
        assert "Traceback" not in err
        last = err.strip().splitlines()[-1]
        assert last.startswith("lguest: "), err
    finally:
        run.proc.kill()
