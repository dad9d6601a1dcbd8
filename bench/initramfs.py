"""A busybox initramfs with an /init of the caller's, for Linux guest benches and tests.

    path = overlay_initramfs(init_script, dest_dir)   # or None: base_initramfs() is None

The Linux kernel unpacks every archive it finds in the initrd, one after another, and a
later file replaces an earlier one.  So we take a base initramfs that has busybox and
append a second gzip'd "newc" cpio archive holding only our /init.

The base is the project's images/linux-initrd.cpio.gz (issue 11's Makefile target, made
here when missing), else the throwaway one in /work/helpers (a busybox at /bin/busybox).
"""

import gzip
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASES = (os.path.join(ROOT, "images", "linux-initrd.cpio.gz"),
         "/work/helpers/quick-initrd.cpio.gz")


def base_initramfs():
    """Path of a busybox initramfs to build on, or None.  The project's is made first
    (its Makefile target) if it is missing; a tree without that target falls back."""
    if not os.path.exists(BASES[0]):
        subprocess.run(["make", "-s", "-C", ROOT, os.path.relpath(BASES[0], ROOT)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for path in BASES:
        if os.path.exists(path):
            return path
    return None


def newc(entries):
    """A "newc" cpio archive (bytes) of entries: (name, mode, data)."""
    out = bytearray()

    def add(ino, name, mode, data):
        name_b = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name_b), 0)
        out.extend(b"070701" + b"".join(b"%08X" % f for f in fields) + name_b)
        out.extend(b"\0" * (-len(out) % 4))
        out.extend(data)
        out.extend(b"\0" * (-len(out) % 4))

    for i, (name, mode, data) in enumerate(entries, 1):
        add(i, name, mode, data)
    add(0, "TRAILER!!!", 0, b"")
    return bytes(out)


def overlay_initramfs(init_script, dest_dir, name="initrd.cpio.gz"):
    """Write base + an archive with /init = init_script (str) to dest_dir/name."""
    base = base_initramfs()
    if base is None:
        return None
    with open(base, "rb") as fh:
        data = fh.read()
    data += gzip.compress(newc([("init", 0o100755, init_script.encode())]), mtime=0)
    path = os.path.join(dest_dir, name)
    with open(path, "wb") as fh:
        fh.write(data)
    return path
