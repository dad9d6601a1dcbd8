"""A real PAE Linux on our Host: ../shared/linux/vmlinux-pae (Linux 3.16, CONFIG_X86_PAE,
HIGHMEM64G) with 1.5 GiB, so that more than a third of its memory is highmem.  It boots
into our initramfs (as in test_linux.py), runs a script from a second disk that reads
and writes the ext2 filesystem on the first and forks, and powers off; the filesystem is
then clean and holds what the Guest wrote.  (PYLGUEST_KERNELS= runs all of
test_linux.py on any kernel, PAE ones included.)"""
import shutil
import subprocess

import pytest

from conftest import (LINUX, ROOT, RUN_TIMEOUT, assert_no_traceback, launch, linux_args,
                      script_image, t_lines)

KERNEL = LINUX / "vmlinux-pae"

pytestmark = pytest.mark.skipif(not KERNEL.exists(), reason="no ../shared/linux/vmlinux-pae "
                                "(the shared PAE Linux test kernel)")

SCRIPT = """\
set -e
echo "t: highmem-kb $(awk '/^HighTotal:/ { print $2 }' /proc/meminfo)"
mount -t ext2 /dev/vda /mnt
echo "t: read $(head -n 1 /mnt/hello.txt)"
echo 'written by a PAE Guest' >/mnt/pae.txt
umount /mnt
echo "t: pids $$ $(sh -c 'echo $$')"
"""


def test_pae_linux_with_highmem_uses_its_disk_forks_and_powers_off(initrd, tmp_path):
    disk = tmp_path / "disk.img"
    shutil.copy(ROOT / "images" / "disk.img", disk)
    size = disk.stat().st_size
    script = script_image(tmp_path / "script.img", SCRIPT)

    proc = launch(linux_args(KERNEL, initrd, "pyl.script=vdb", blocks=[disk, script],
                             mem=1536), timeout=RUN_TIMEOUT)
    assert_no_traceback(proc)
    out, t = proc.stdout, t_lines(proc.stdout)
    assert "pyl: done vdb status=0" in out, out[-3000:] + proc.stderr
    assert int(t["highmem-kb"]) > 512 * 1024, t
    assert t["read"] == "Hello from the pylguest disk image.", t
    parent, child = t["pids"].split()
    assert parent != child, t
    assert proc.returncode == 0 and "Power down" in proc.stderr, proc.stderr

    assert disk.stat().st_size == size
    fsck = subprocess.run(["e2fsck", "-fn", str(disk)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    cat = subprocess.run(["debugfs", "-R", "cat /pae.txt", str(disk)],
                         capture_output=True, text=True)
    assert cat.stdout == "written by a PAE Guest\n", cat.stdout + cat.stderr
