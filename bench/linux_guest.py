"""A Linux Guest for benches and tests: the project's initramfs and the script it runs.

    path = initramfs()                # images/linux-initrd.cpio.gz, made if missing
    script_image(path, "echo hi\n")   # a disk whose start is a shell script

The initramfs's /init (images/linux-init/init, README "Running Linux") runs the shell
script at the start of a block device named with pyl.script=vdX on the kernel command
line, then powers off.
"""

import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INITRD = os.path.join(ROOT, "images", "linux-initrd.cpio.gz")


def initramfs():
    """The project's initramfs, made (or brought up to date) by the Makefile; returns
    (path, None), or (None, why) when it can't be made here."""
    r = subprocess.run(["make", "-s", "-C", ROOT, os.path.relpath(INITRD, ROOT)],
                       capture_output=True, text=True)
    if r.returncode != 0 or not os.path.exists(INITRD):
        return None, (r.stderr or r.stdout).strip() or "make failed"
    return INITRD, None


def initramfs_or_skip(bench, kernel):
    """What a Linux bench needs before it boots: the initramfs's path, or None after
    one "BENCH: skipped: ..." line (no kernel at `kernel`, no initramfs here)."""
    if not os.path.isfile(kernel):
        print("%s: skipped: no Linux guest kernel at %s (--kernel)" % (bench, kernel))
        return None
    initrd, why = initramfs()
    if initrd is None:
        print("%s: skipped: no initramfs (make images/linux-initrd.cpio.gz: %s)"
              % (bench, why.splitlines()[-1]))
    return initrd


def script_image(path, text):
    """Write text to path padded with NULs to whole pages (the initramfs drops them)."""
    data = text.encode()
    with open(path, "wb") as fh:
        fh.write(data + bytes(-len(data) % 4096))
    return path
