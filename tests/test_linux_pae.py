"""A real PAE Linux on our Host: ../shared/linux/vmlinux-pae (Linux 3.16, CONFIG_X86_PAE,
HIGHMEM64G) with 1.5 GiB, so that more than a third of its memory is highmem.  It boots
into our initramfs, runs a script from a second disk that reads and writes the ext2
filesystem on the first and forks, and powers off; the filesystem is then clean and
holds what the Guest wrote."""
import re
import shutil
import subprocess

import pytest

from conftest import ROOT, assert_no_traceback, launch

KERNEL = ROOT.parent / "shared" / "linux" / "vmlinux-pae"
INITRD = ROOT / "images" / "linux-initrd.cpio.gz"

pytestmark = [
    pytest.mark.skipif(not KERNEL.exists(), reason="no ../shared/linux/vmlinux-pae "
                       "(the shared PAE Linux test kernel)"),
    pytest.mark.skipif(not INITRD.exists(), reason="no images/linux-initrd.cpio.gz "
                       "(make images/linux-initrd.cpio.gz)"),
]

SCRIPT = b"""set -e
grep -E '^(MemTotal|HighTotal):' /proc/meminfo
mount -t ext2 /dev/vda /mnt
cat /mnt/hello.txt
echo 'written by a PAE Guest' >/mnt/pae.txt
umount /mnt
echo "pids: $$ $(sh -c 'echo $$')"
"""


def test_pae_linux_with_highmem_uses_its_disk_forks_and_powers_off(tmp_path):
    disk = tmp_path / "disk.img"
    shutil.copy(ROOT / "images" / "disk.img", disk)
    size = disk.stat().st_size
    script = tmp_path / "script.img"
    script.write_bytes(SCRIPT.ljust(4096, b"\0"))

    proc = launch(["--block=%s" % disk, "--block=%s" % script, "--initrd=%s" % INITRD,
                   1536, KERNEL, "console=hvc0", "pyl.script=vdb"], timeout=180)
    assert_no_traceback(proc)
    out = proc.stdout
    assert "pyl: init uptime=" in out, out + proc.stderr
    assert "pyl: done vdb status=0" in out, out + proc.stderr
    high = re.search(r"HighTotal:\s+(\d+) kB", out)
    assert high and int(high.group(1)) > 512 * 1024, out
    assert "Hello from the pylguest disk image." in out
    pids = re.search(r"pids: (\d+) (\d+)", out)
    assert pids and pids.group(1) != pids.group(2), out
    assert proc.returncode == 0 and "Power down" in proc.stderr, proc.stderr

    assert disk.stat().st_size == size
    fsck = subprocess.run(["/sbin/e2fsck", "-fn", str(disk)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    cat = subprocess.run(["/sbin/debugfs", "-R", "cat /pae.txt", str(disk)],
                         capture_output=True, text=True)
    assert cat.stdout == "written by a PAE Guest\n", cat.stdout + cat.stderr
