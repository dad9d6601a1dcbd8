"""The Linux 3.16 C Launcher, unmodified, on pylguest's Host (issue 18), end to end.

Our own guest kernel's test modes pass under the C Launcher's devices.  And
c_launcher.py runs ../shared/linux/lguest-launcher-3.16-dynamic with our preload shim;
it boots ../shared/linux/vmlinux on the project's initramfs, whose /init runs our
script (SCRIPT, from a second disk: pyl.script=vdb): it reads and writes /dev/vda,
echoes a line typed on the console, pings the host over eth0 when there is one; then
/init powers off.  We judge what the user sees: the Guest's lines, the C Launcher's
own death message and status, the disk image, and no process left behind.
"""
import hashlib
import os
import re
import signal
import subprocess
import uuid
import zlib

import psutil
import pytest

from conftest import PYTHON, ROOT
from bench.linux_guest import initramfs, script_image
from bench.net import NetNS, net_unavailable

SHARED = ROOT.parent / "shared" / "linux"
C_LAUNCHER = SHARED / "lguest-launcher-3.16-dynamic"
KERNEL = SHARED / "vmlinux"
SHIM = ROOT / "shim" / "lguest-shim.so"
HOST_IP, GUEST_IP = "10.218.3.1", "10.218.3.2"
MARK = b"written by the Guest of the C Launcher\n"

pytestmark = pytest.mark.skipif(not (C_LAUNCHER.exists() and KERNEL.exists()),
                                reason="no ../shared/linux (the C Launcher and a Linux kernel)")

SCRIPT = r"""echo "CL vda $(head -c 1048576 /dev/vda | md5sum)"
echo "%(mark)s" | dd of=/dev/vda bs=512 seek=2048 conv=fsync 2>/dev/null
read -t 20 line && echo "CL got $line"
if [ -n "$pyl_ip" ]; then
    ping -c 3 -W 10 %(host)s >/dev/null && echo "CL ping ok"
fi
""" % {"mark": MARK.decode().strip(), "host": HOST_IP}


@pytest.fixture(scope="module")
def shim():
    if not SHIM.exists():
        subprocess.run(["make", "-s", "-C", str(ROOT), "shim/lguest-shim.so"], check=True)
    return SHIM


@pytest.fixture(scope="module")
def initrd(shim):
    path, why = initramfs()
    if path is None:
        pytest.fail("make images/linux-initrd.cpio.gz: %s" % why)
    return path


def test_our_guest_passes_its_tests_under_the_c_launcher(tmp_path, guest_elf, shim):
    from conftest import lgtest_lines, make_image
    disk = make_image(tmp_path / "disk.img", 8 << 20, seed=18)
    data = disk.read_bytes()
    proc = subprocess.run(
        [PYTHON, str(ROOT / "c_launcher.py"), "--launcher=%s" % C_LAUNCHER,
         "--block=%s" % disk, "64", str(guest_elf),
         "lgtest=irq,timer,blk-read,blk-write,console", "lgblk=8192:16384"],
        input="hello, Guest\nquit\n", capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    assert lgtest_lines(proc.stdout) == {m: "PASS" for m in
                                         ("irq", "timer", "blk-read", "blk-write", "console")}
    assert "echo: hello, Guest" in proc.stdout
    # What the C Launcher's block thread read for the Guest is the image (before
    # blk-write changed its second half).
    m = re.search(r"^blk-read: crc32=([0-9a-f]{8}) sectors=(\d+)$", proc.stdout, re.M)
    assert int(m.group(1), 16) == zlib.crc32(data[:int(m.group(2)) * 512])
    assert_c_power_off(proc)


def test_stats_and_trace_watch_the_c_launchers_guest(tmp_path, guest_elf, shim):
    """--stats and --trace on c_launcher.py watch the Host's side of the C Launcher's
    run: every hypercall our Guest counted is in the table, the LHREQ_IRQs its device
    threads wrote are raised interrupts, and the trace is JSON with the Guest's track."""
    import json
    from conftest import guest_hcalls, host_hcalls, make_image
    disk = make_image(tmp_path / "disk.img", 1 << 20, seed=17)
    trace = tmp_path / "c.json"
    proc = subprocess.run(
        [PYTHON, str(ROOT / "c_launcher.py"), "--launcher=%s" % C_LAUNCHER, "--stats",
         "--trace=%s" % trace, "--block=%s" % disk, "64", str(guest_elf),
         "lgtest=hcall,async,irq,blk-read", "lghcalls=1"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    assert_c_power_off(proc)
    mine = guest_hcalls(proc.stdout)
    assert mine["NOTIFY"][0] > 0 and sum(a for _, a in mine.values()) > 0
    assert host_hcalls(proc.stderr) == mine
    # The block device's interrupt (IRQ 1): raised by an LHREQ_IRQ of the C's
    # device thread, delivered to the Guest.
    m = re.search(r"^\s+1\s+\S.*?\s(\d+)\s+(\d+)\s+\d+\s+\d+\s+\d+\s+\d+$",
                  proc.stderr.split("Interrupts (", 1)[1], re.M)
    assert m and int(m.group(1)) > 0 and int(m.group(2)) > 0, proc.stderr
    with open(trace) as f:
        names = {e.get("name") for e in json.load(f)["traceEvents"]}
    assert {"LHCALL_LGUEST_INIT", "LHCALL_NOTIFY", "IRQ 1 delivered"} <= names


def assert_c_power_off(proc):
    """Power-off is a Guest death to the C Launcher: errx(1, "%s", reason) after
    read() said ENOENT and then gave the reason.  Unless one of its device threads
    got there first: once the Guest is dead LHREQ_IRQ is ENOENT too (3.16's
    lguest_user.c), the thread's err() exits, and its SIGCHLD handler
    kill(0, SIGTERM)s the whole Launcher before the main thread speaks.  That race
    is the C's own; both endings are what a user of the real lguest saw."""
    err = proc.stderr
    if re.search(r"^lguest-launcher-3.16-dynamic: Triggering irq \d+: "
                 r"No such file or directory$", err, re.M):
        assert proc.returncode in (1, 128 + signal.SIGTERM), err
    else:
        assert proc.returncode == 1, err
        assert "lguest-launcher-3.16-dynamic: CRASH: Power down" in err


def boot(tmp_path, initrd, net_ns=None, timeout=120):
    """Boot with the C Launcher; returns (CompletedProcess, disk path, md5 of its
    first MiB before the boot, tag).  Every process of the run carries the tag in its
    environment, so leftovers can be found."""
    disk = tmp_path / "disk.img"
    disk.write_bytes(os.urandom(4 << 20))
    md5 = hashlib.md5(disk.read_bytes()[:1 << 20]).hexdigest()
    script = script_image(tmp_path / "script.img", SCRIPT)
    tag = uuid.uuid4().hex
    args = [PYTHON, str(ROOT / "c_launcher.py"), "--launcher=%s" % C_LAUNCHER,
            "--block=%s" % disk, "--block=%s" % script, "--initrd=%s" % initrd]
    if net_ns is not None:
        args.append("--tunnet=%s" % HOST_IP)
    args += ["64", str(KERNEL), "console=hvc0", "pyl.script=vdb"]
    if net_ns is not None:
        args.append("pyl.ip=%s" % GUEST_IP)
    if net_ns is not None:
        args = net_ns.argv(args)
    env = dict(os.environ, PYLGUEST_TEST_TAG=tag)
    proc = subprocess.run(args, input="hello from the host\n", capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, env=env)
    return proc, disk, md5, tag


def leftovers(tag):
    out = []
    for p in psutil.process_iter():
        try:
            if p.environ().get("PYLGUEST_TEST_TAG") == tag:
                out.append(p)
        except psutil.Error:
            pass
    return out


def check_boot(proc, disk, md5, tag):
    out, err = proc.stdout, proc.stderr
    assert "Traceback" not in out + err, err
    assert "pyl: init uptime=" in out, out[-3000:] + err
    assert "Booting paravirtualized kernel on lguest" in out
    assert "pyl: done vdb status=0" in out, out[-2000:]
    # The device threads served the block device: what the Guest read is the image,
    # and what it wrote is in the file.
    assert "CL vda %s" % md5 in out, out[-2000:]
    with open(disk, "rb") as fh:
        fh.seek(2048 * 512)
        assert fh.read(len(MARK)) == MARK
    assert os.path.getsize(disk) == 4 << 20
    # Console input reached the Guest; its output reached us.
    assert "CL got hello from the host" in out
    assert_c_power_off(proc)
    assert leftovers(tag) == []


def test_c_launcher_boots_linux_with_block_and_console(tmp_path, initrd):
    check_boot(*boot(tmp_path, initrd))


@pytest.mark.skipif(net_unavailable() is not None, reason=net_unavailable() or "")
def test_c_launcher_networks_in_a_namespace(tmp_path, initrd):
    with NetNS("lgc") as ns:
        proc, disk, md5, tag = boot(tmp_path, initrd, net_ns=ns)
        check_boot(proc, disk, md5, tag)
        assert "CL ping ok" in proc.stdout, proc.stdout[-2000:]
