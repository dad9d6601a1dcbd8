"""The demo that `make run` shows: boot, devices, the ext2 superblock, a prompt."""
import re
import shutil
import subprocess

import pytest

from conftest import ROOT, assert_no_traceback

DISK = ROOT / "images" / "disk.img"


def dumpe2fs_header(image):
    out = subprocess.run(["dumpe2fs", "-h", str(image)], capture_output=True,
                         text=True, check=True).stdout
    fields = {}
    for line in out.splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            fields[k.strip()] = v.strip()
    return fields


@pytest.fixture
def disk_copy(tmp_path):
    if not DISK.exists():
        subprocess.run(["make", "-s", "-C", str(ROOT), "images/disk.img"], check=True)
    dst = tmp_path / "disk.img"
    shutil.copy(DISK, dst)
    return dst


def test_demo_prints_superblock_and_echoes(run_launcher, disk_copy):
    before = disk_copy.read_bytes()
    proc = run_launcher([f"--block={disk_copy}", 64, "guest/guest.elf"],
                        input="hello there\npoweroff\n")
    assert_no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    want = dumpe2fs_header(disk_copy)
    out = proc.stdout
    assert re.search(r"Filesystem volume name:\s+%s\s*$" % re.escape(want["Filesystem volume name"]),
                     out, re.M), out
    assert re.search(r"Block count:\s+%s\s*$" % want["Block count"], out, re.M), out
    assert re.search(r"Block size:\s+%s\s*$" % want["Block size"], out, re.M), out
    assert "hello there" in out
    # The demo only reads: the image is untouched.
    assert disk_copy.read_bytes() == before


def test_demo_powers_off_at_end_of_input(run_launcher, disk_copy):
    proc = run_launcher([f"--block={disk_copy}", 64, "guest/guest.elf"])
    assert_no_traceback(proc)
    assert proc.returncode == 0, proc.stdout + proc.stderr
