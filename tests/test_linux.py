"""Real Linux guests (issue 11): the Linux 3.16 lguest kernels in
../shared/linux, as an ELF vmlinux and as a bzImage, boot with our initramfs
(images/linux-initrd.cpio.gz, README "Running Linux") and work: a shell on a
terminal, virtio block read and written through ext2, two disks in order,
the network both ways, reboot, a big Guest, and a clean end when the
Launcher is killed in the middle of disk I/O.

Each Guest runs the shell script we write to a small disk image
(`pyl.script=vdX`) and prints "t: ..." lines for us to check; the initramfs
frames it with "pyl: ..." lines.  One boot per kernel serves the disk
tests: they check different things in what it printed and left behind.
"""
import hashlib
import os
import re
import signal
import subprocess
import time

import pytest

from conftest import (LINUX, ROOT, RUN_TIMEOUT, Launcher, assert_no_traceback, gone_within,
                      launch, linux_args, make_image, script_image, t_lines)

#: The kernels to boot: the shared ones, or your own list, e.g.
#: PYLGUEST_KERNELS=build/linux/vmlinux:build/linux/arch/x86/boot/bzImage
OWN_KERNELS = os.environ.get("PYLGUEST_KERNELS")
KERNELS = (OWN_KERNELS.split(":") if OWN_KERNELS
           else [str(LINUX / "vmlinux"), str(LINUX / "bzImage")])

pytestmark = pytest.mark.skipif(
    not OWN_KERNELS and not LINUX.is_dir(),
    reason="no ../shared/linux: no Linux kernel to boot")

@pytest.fixture(scope="module", params=KERNELS,
                ids=[os.path.basename(k) if not OWN_KERNELS else k for k in KERNELS])
def kernel(request):
    path = (ROOT / request.param).resolve()
    if not path.exists():
        pytest.skip("no kernel %s" % request.param)
    return path


def uptimes_at_init(out):
    return [float(u) for u in re.findall(r"^pyl: init uptime=([\d.]+)", out, re.M)]


# --- One boot, three disks: ext2 at vda, data at vdb, the script at vdc -----

EXT2_BYTES = 8 << 20
DATA_BYTES = (3 << 20) + 7 * 512     # multi-MiB, and not a whole ext2 block

DISK_SCRIPT = """\
echo "t: disks $(ls /sys/block | grep '^vd' | tr '\\n' ' ')"
for d in vda vdb vdc; do echo "t: sectors-$d $(cat /sys/block/$d/size)"; done
echo "t: md5-vda $(md5sum </dev/vda)"
echo "t: md5-vdb $(md5sum </dev/vdb)"
mount -t ext2 /dev/vda /mnt || echo "t: mount-failed"
grep ' /mnt ' /proc/mounts | sed 's/^/t: mounted /'
head -c %d /dev/vdb >/mnt/data.bin
echo "t: written $? $(stat -c %%s /mnt/data.bin)"
umount /mnt
echo "t: umount $?"
"""


@pytest.fixture(scope="module")
def disk_boot(kernel, initrd, tmp_path_factory):
    """Boot once with an empty ext2 filesystem (vda), random data (vdb) and
    the script (vdc); the Guest md5sums both disks, mounts vda read-write,
    copies vdb into a file there and unmounts.  Returns what the disk tests
    check."""
    d = tmp_path_factory.mktemp("linux-disks")
    ext2 = d / "ext2.img"
    make_image(ext2, EXT2_BYTES)
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext2", "-b", "1024", "-L", "lintest",
                    str(ext2)], check=True)
    ext2_before = ext2.read_bytes()
    data = make_image(d / "data.img", DATA_BYTES, seed=11).read_bytes()
    script = script_image(d / "script.img", DISK_SCRIPT % DATA_BYTES)
    started = time.monotonic()
    proc = launch(linux_args(kernel, initrd, "pyl.script=vdc",
                             blocks=[ext2, d / "data.img", script]),
                  timeout=RUN_TIMEOUT)
    return dict(proc=proc, t=t_lines(proc.stdout), ext2=ext2, ext2_before=ext2_before,
                data=data, script=script, wall=time.monotonic() - started)


def test_boots_to_init_and_powers_off(disk_boot):
    proc = disk_boot["proc"]
    assert_no_traceback(proc)
    assert "Linux version 3." in proc.stdout
    ups = uptimes_at_init(proc.stdout)
    assert len(ups) == 1 and 0 < ups[0] < disk_boot["wall"], proc.stdout[-2000:]
    assert "pyl: done vdc status=0" in proc.stdout
    assert "pyl: end poweroff" in proc.stdout
    assert proc.stderr.strip().endswith("lguest: CRASH: Power down"), proc.stderr
    assert proc.returncode == 0


def test_block_devices_appear_in_command_line_order(disk_boot):
    t = disk_boot["t"]
    assert t["disks"].split() == ["vda", "vdb", "vdc"], t
    sizes = [EXT2_BYTES, DATA_BYTES, disk_boot["script"].stat().st_size]
    assert [int(t["sectors-" + d]) for d in ("vda", "vdb", "vdc")] == \
        [s // 512 for s in sizes]


def test_guest_reads_what_the_host_wrote(disk_boot):
    t = disk_boot["t"]
    assert t["md5-vda"].split()[0] == hashlib.md5(disk_boot["ext2_before"]).hexdigest()
    assert t["md5-vdb"].split()[0] == hashlib.md5(disk_boot["data"]).hexdigest()


def test_ext2_written_by_the_guest_is_clean_and_exact(disk_boot, tmp_path):
    t, ext2 = disk_boot["t"], disk_boot["ext2"]
    # "/dev/vda /mnt ext2 rw,... 0 0" from /proc/mounts
    assert "mount-failed" not in t, t
    assert t["mounted"].split()[2] == "ext2", t
    assert t["mounted"].split()[3].split(",")[0] == "rw", t
    assert t["written"] == "0 %d" % DATA_BYTES, t
    assert t["umount"] == "0", t
    assert ext2.stat().st_size == EXT2_BYTES
    fsck = subprocess.run(["e2fsck", "-fn", str(ext2)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    out = tmp_path / "data.bin"
    subprocess.run(["debugfs", "-R", "dump /data.bin %s" % out, str(ext2)],
                   capture_output=True, check=True)
    assert out.read_bytes() == disk_boot["data"]


# --- A shell on a terminal ------------------------------------------------------

def test_interactive_shell_through_a_pty(kernel, initrd):
    prompt = "pylguest:/# "
    with Launcher(linux_args(kernel, initrd), stdin="pty") as run:
        run.wait_for("pyl: end shell", timeout=RUN_TIMEOUT)
        wait_prompts(run, prompt, 1)
        run.write("echo $((6 * 7)) $(cat /sys/class/tty/console/active)\r")
        run.wait_for("42 hvc0\r", timeout=60)
        # The console is the shell's controlling terminal: ^C ends a
        # command, not the shell.
        wait_prompts(run, prompt, 2)
        run.write("sleep 1000\r")
        time.sleep(1)
        run.write("\x03")
        wait_prompts(run, prompt, 3)
        run.write("echo still-$((1 + 1))\r")
        run.wait_for("still-2\r", timeout=60)
        wait_prompts(run, prompt, 4)
        run.write("poweroff -f\r")
        proc = run.finish(RUN_TIMEOUT)
        assert_no_traceback(proc)
        assert proc.returncode == 0, proc.stderr
        assert run.pty_modes() == run.modes_before


def wait_prompts(run, prompt, n, timeout=60):
    """Wait until the shell has printed its prompt n times: typing before
    it reads the line would race its line editor setting up."""
    deadline = time.monotonic() + timeout
    while run.out.count(prompt) < n:
        if time.monotonic() > deadline:
            raise AssertionError("prompt %d not seen:\n%s" % (n, run.out[-2000:]))
        time.sleep(0.05)


# --- The network, in a namespace of our own -------------------------------------

HOST_IP = "10.213.11.1"
GUEST_IP = "10.213.11.2"

NET_SCRIPT = """\
ping -c 3 -w 60 %s >/tmp/ping.out 2>&1
echo "t: guest-ping $? $(grep -c 'bytes from' /tmp/ping.out)"
echo "t: ready"
read -r word
echo "t: heard $word"
"""


def test_guest_pings_host_and_host_pings_guest(kernel, initrd, tmp_path):
    from bench.net import NetNS, icmp_socket, net_unavailable, ping, wait_for_reply
    why = net_unavailable()
    if why:
        pytest.skip(why)
    script = script_image(tmp_path / "script.img", NET_SCRIPT % HOST_IP)
    with NetNS("lglx") as ns:
        with Launcher(["--tunnet=%s" % HOST_IP] + linux_args(
                kernel, initrd, "pyl.ip=%s" % GUEST_IP, "pyl.script=vda", blocks=[script]),
                prefix=ns.argv([]), stdin=subprocess.PIPE) as run:
            run.wait_for("t: ready", timeout=RUN_TIMEOUT)
            sock = icmp_socket(ns)
            assert wait_for_reply(sock, GUEST_IP, 60), "the Guest never answered"
            rtts = ping(sock, GUEST_IP, 5, timeout=5.0)
            run.write("over\n")
            proc = run.finish(RUN_TIMEOUT)
    status, out, err = proc.returncode, proc.stdout, proc.stderr
    t = t_lines(out)
    assert "pyl: eth0 %s/24" % GUEST_IP in out
    assert t["guest-ping"] == "0 3", out[-2000:]
    assert all(r is not None for r in rtts), rtts
    assert t["heard"] == "over"
    assert "Traceback" not in out + err
    assert status == 0, err


# --- Reboot ---------------------------------------------------------------------

REBOOT_SCRIPT = """\
if [ "$(head -c 6 /dev/vda)" = booted ]; then
    echo "t: second-boot"
else
    echo -n booted >/dev/vda
    sync
    echo "t: first-boot"
    reboot -f
fi
"""


def test_reboot_restarts_the_guest(kernel, initrd, tmp_path):
    """`reboot -f` in the Guest: LGUEST_SHUTDOWN_RESTART, and the Launcher
    execs itself afresh (3.16's restart_guest()); the new Guest boots from
    the same disks and finds what the first one wrote."""
    marker = make_image(tmp_path / "marker.img", 1 << 20)
    script = script_image(tmp_path / "script.img", REBOOT_SCRIPT)
    proc = launch(linux_args(kernel, initrd, "pyl.script=vdb", blocks=[marker, script]),
                  timeout=RUN_TIMEOUT)
    assert_no_traceback(proc)
    out = proc.stdout
    assert len(uptimes_at_init(out)) == 2, out[-3000:]
    first, rest = out.split("t: first-boot", 1)
    assert "reboot: Restarting system" in rest
    assert "Linux version 3." in rest and "pyl: init uptime=" in rest
    assert "t: second-boot" in rest and "pyl: done vdb status=0" in rest
    assert marker.read_bytes()[:6] == b"booted"
    assert proc.returncode == 0, proc.stderr


# --- A big Guest ----------------------------------------------------------------

def kernel_config(kernel):
    """The kernel's configuration {"CONFIG_X": "y", ...}, or {} if unknown:
    `config` beside a shared kernel (`config-pae` beside a -pae one), or
    the build directory's .config (a bzImage sits in arch/x86/boot/)."""
    shared = "config-pae" if kernel.name.endswith("-pae") else "config"
    for cfg in [kernel.parent / shared, kernel.parent / ".config"] + \
            [d / ".config" for d in kernel.parents[3:4]]:
        if cfg.is_file():
            return dict(line.split("=", 1) for line in cfg.read_text().splitlines()
                        if line.startswith("CONFIG_") and "=" in line)
    return {}


def test_big_guest_boots(kernel, initrd):
    """A 1 GiB Guest, if the kernel can map 1 GiB.  A NOHIGHMEM kernel
    (the shared vmlinux and bzImage) maps at most ~891 MiB, and an lguest
    Guest looks for its device page at the end of the memory it maps,
    while the Launcher puts it right above RAM: with more RAM than that
    the Guest finds no devices, on the real lguest as here.  Such a kernel
    gets 880 MiB, all its lowmem: the initrd lands near its top."""
    highmem = kernel_config(kernel).get("CONFIG_NOHIGHMEM") != "y"
    mem = 1024 if highmem else 880
    proc = launch(linux_args(kernel, initrd, "pyl.run=info", mem=mem),
                  timeout=RUN_TIMEOUT)
    assert_no_traceback(proc)
    m = re.search(r"^info: MemTotal: +(\d+) kB", proc.stdout, re.M)
    assert m, proc.stdout[-3000:]
    assert int(m.group(1)) > (mem - 40) * 1024
    assert "pyl: done info status=0" in proc.stdout
    assert proc.returncode == 0, proc.stderr


# --- SIGKILL in the middle of disk I/O --------------------------------------------

KILL_SCRIPT = """\
yes pylguest | head -c 65536 >/tmp/pattern
echo "t: writing"
while :; do
    for i in 0 1 2 3 4 5 6 7; do
        dd if=/tmp/pattern of=/dev/vda bs=64k seek=$i conv=fsync 2>/dev/null
    done
done
"""


def test_sigkill_during_disk_io_leaves_nothing_behind(kernel, initrd, tmp_path):
    disk = make_image(tmp_path / "disk.img", 4 << 20)
    script = script_image(tmp_path / "script.img", KILL_SCRIPT)
    with Launcher(linux_args(kernel, initrd, "pyl.script=vdb", blocks=[disk, script]),
                  stdin=subprocess.PIPE) as run:
        run.wait_for("t: writing", timeout=RUN_TIMEOUT)
        kids = run.children()
        assert len(kids) >= 2, kids          # the Waker, the block worker
        time.sleep(1.0)                      # the Guest writes all along
        run.signal(signal.SIGKILL)
        proc = run.finish(60, leftovers_ok=True)
        assert proc.returncode == -signal.SIGKILL
        # A zombie waiting for its new parent to reap it is gone for our
        # purpose: it runs nothing and holds no file.
        assert gone_within(kids, 30), run.children()
    assert disk.stat().st_size == 4 << 20
    assert b"pylguest\n" * 16 in disk.read_bytes()   # the writes reached the disk
