#!/usr/bin/env python3
"""The soak (issue 19): a real Linux Guest kept busy in every way at once for
minutes, with faults injected from outside, and everything checked.

    make soak MINUTES=10 [KERNEL=../shared/linux/vmlinux]
    .venv/bin/python bench/soak.py [--minutes 10 | --seconds 60] [--kernel K]
                                   [--mem 128] [--log console.log] [--keep]

Needs root (a network namespace, a TAP device, a small tmpfs) and says so
in one line otherwise.  What runs, all at once:

- In the Guest, our initramfs' `soak` script (images/linux-init/scripts/soak,
  which says what each loop does): write-then-verify files on ext2 on
  /dev/vda, direct reads checked against md5s and direct write-read-verify
  on raw /dev/vdb, fork+exec, a tmpfs filled to the brim and freed, bursts
  of console output, busybox nc to and from us.
- From the host: a ping flood at the Guest (5 s of every 15), TCP servers
  for its nc both ways (we check what it sends, it checks what we send),
  and checks of every console burst.
- Faults, one every --fault-every seconds, in turn: SIGSTOP of the Waker
  for a moment, then SIGCONT; a burst of console input (the Guest checks
  its md5); the same stop for the block worker of vda; a window of ENOSPC
  on the filesystem holding vdb's image; the worker of vdb; another input
  burst.  The Waker and the workers are found among the children of the
  Launcher we started (a worker by the image it holds open); nothing else
  is ever signalled.

The ENOSPC window: vdb's image lives on a tmpfs of its own whose only
holes are vdb's "sparse" blocks.  We fill the tmpfs with a file of ours
until it is full and tell the Guest; it writes a sparse block (the host
must allocate: the worker's pwritev fails, the Guest must see EIO) and a
block of the write region (already allocated: must succeed and read back
right), and says what happened.  We delete our file, the Guest writes the
sparse block again (must succeed and read back right), and we punch the
hole again for next time.  No other loop touches the sparse blocks, so an
expected error is never taken for a verification error, nor the reverse.

A progress line every --interval seconds: time; per Guest loop
rounds/errors; requests/s of vda and vdb and interrupts/s (from the
Guest's /proc/diskstats and /proc/interrupts, which it prints every few
seconds: nothing is added to the Host for this); faults done; ping replies;
then each process's private RSS and its open fds, read from /proc.  Not
counted as private: the Guest's RAM, shared between the Launcher and the
workers (resident as the Guest touches it, up to --mem), and unicorn's
buffer of translated code in the Launcher (a cache that fills as new Guest
code runs, bounded by its size): the line shows it after a "+".

At the end the Guest is told to stop its loops, check its last files and
unmount; it must still answer on the console; then we SIGTERM the Launcher.
"Passed" means all of:
  - no verification error anywhere: every Guest loop ran and reported zero
    errors, every console burst and TCP transfer arrived intact, every
    ENOSPC window gave the hole write EIO and nothing else an error, and
    no alarming kernel message;
  - flat: each process's private RSS in the last minute (a third of the
    run, if shorter than three minutes) is at most RSS_SLACK_MB above the
    first's (averages), and its open fds at most the first's maximum;
  - the Guest still answers on the console after all that;
  - SIGTERM ends the Launcher within SHUTDOWN_SECS with "lguest: Killed by
    SIGTERM" and no traceback, and no process of it is left;
  - e2fsck -fn finds vda's ext2 clean, and vdb's read region and header are
    as we wrote them, at the same size.
Prints a summary and exits 0 when passed, 1 when not (2: could not run).
"""

import argparse
import ctypes
import hashlib
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.linux_guest import INITRD, initramfs  # noqa: E402
from bench.net import NetNS, flood, icmp_socket, net_unavailable, wait_for_reply  # noqa: E402

DEFAULT_KERNEL = os.path.join(os.path.dirname(ROOT), "shared", "linux", "vmlinux")
HOST_IP = "10.213.19.1"
GUEST_IP = "10.213.19.2"
PORT_FROM_GUEST = 5002        # the Guest sends, we check and answer "ok SIZE"
PORT_TO_GUEST = 5001          # we send "SIZE MD5\n" + data, the Guest checks

#: vdb: 64 KiB blocks; a header, a read region, a write region, holes.
BLOCK = 65536
READ_BLOCKS = 128             # 8 MiB
WRITE_BLOCKS = 64             # 4 MiB
SPARSE_BLOCKS = 16
READ0 = 1
WRITE0 = READ0 + READ_BLOCKS
SPARSE0 = WRITE0 + WRITE_BLOCKS
VDB_BLOCKS = SPARSE0 + SPARSE_BLOCKS
#: room on vdb's tmpfs beyond the allocated blocks: the holes fit
VDB_FS_SLACK = 2 << 20
VDA_BYTES = 64 << 20

#: the Guest's loops (its "ctl" and "watch" counters are the control's
#: commands and the watch over the loops)
LOOPS = ("ext2", "raw-r", "raw-w", "fork", "mem", "out", "tcp")
#: what the Guest's `out` loop prints (images/linux-init/scripts/soak)
OUT_TEXT = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
IN_LINES = 100                # lines in a console input burst

#: "flat": last-minute average private RSS at most this above the first's.
#: Seen here: +0.6 MB over ten minutes; a leak of 150 bytes a block request
#: would pass 4 MB in ten minutes at 50 requests/s.
RSS_SLACK_MB = 4.0
SHUTDOWN_SECS = 30            # SIGTERM to no process left
STOP_SECS = 300               # "stop" to "soak: stopped"
REPLY_SECS = 120              # a command's answer from a busy Guest
FLOOD_SECS, FLOOD_EVERY = 5.0, 15.0

#: kernel messages that are never expected (the ENOSPC windows' "I/O error,
#: dev vdb" ones are checked apart: in the sparse blocks only)
BAD_DMESG = re.compile(r"BUG|Oops|WARNING|oom|Out of memory|Killed process|"
                       r"lockup|stall|corrupt|EXT2-fs|hung|segfault|blocked for",
                       re.I)

FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 1, 2
_libc = ctypes.CDLL(None, use_errno=True)


def now():
    return time.monotonic()


def why_not(kernel):
    """Why the soak can't run here (str), or None."""
    why = net_unavailable()
    if why:
        return why.replace("network tests need", "the soak needs")
    if not os.path.isfile(kernel):
        return "no kernel %s (give --kernel, or KERNEL= to make)" % kernel
    for tool in ("mke2fs", "e2fsck", "mount", "umount"):
        if not any(os.access(os.path.join(d, tool), os.X_OK)
                   for d in ("/sbin", "/usr/sbin", "/bin", "/usr/bin")):
            return "no %s" % tool
    return None


def punch_hole(fd, offset, length):
    """fallocate(PUNCH_HOLE|KEEP_SIZE): make [offset, offset+length) a hole."""
    if _libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                       ctypes.c_long(offset), ctypes.c_long(length)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, "fallocate: %s" % os.strerror(e))


# --- The disks -------------------------------------------------------------------

class Disks:
    """vda: an empty ext2 filesystem in the work directory.  vdb: raw, on a
    tmpfs of its own just big enough (so we can fill it), laid out as the
    Guest's script expects: a text header in block 0 with every read
    block's md5, the read region, the write region (both random and
    allocated), the sparse blocks (holes)."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.vda = os.path.join(workdir, "vda.img")
        self.vdbfs = os.path.join(workdir, "vdbfs")
        self.vdb = os.path.join(self.vdbfs, "vdb.img")
        self.filler = os.path.join(self.vdbfs, "filler")
        self.mounted = False

    def make(self):
        with open(self.vda, "wb") as f:
            f.truncate(VDA_BYTES)
        subprocess.run(["mke2fs", "-q", "-F", "-t", "ext2", "-L", "soak", self.vda],
                       check=True, capture_output=True)
        os.mkdir(self.vdbfs)
        size = (VDB_BLOCKS - SPARSE_BLOCKS) * BLOCK + VDB_FS_SLACK
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%d,mode=0700" % size,
                        "pylguest-soak", self.vdbfs], check=True, capture_output=True)
        self.mounted = True
        rng = random.Random()
        read = rng.randbytes(READ_BLOCKS * BLOCK)
        lines = ["pylguest-soak-vdb 1",
                 "read %d %d" % (READ0, READ_BLOCKS),
                 "write %d %d" % (WRITE0, WRITE_BLOCKS),
                 "sparse %d %d" % (SPARSE0, SPARSE_BLOCKS)]
        for i in range(READ_BLOCKS):
            lines.append("b %d %s" % (READ0 + i, md5(read[i * BLOCK:(i + 1) * BLOCK])))
        for i in range(0, READ_BLOCKS - 15, 16):
            lines.append("c %d %s" % (READ0 + i, md5(read[i * BLOCK:(i + 16) * BLOCK])))
        header = ("\n".join(lines) + "\n").encode()
        assert len(header) <= BLOCK
        self.header = header.ljust(BLOCK, b"\0")
        self.read_md5 = md5(read)
        with open(self.vdb, "wb") as f:
            f.truncate(VDB_BLOCKS * BLOCK)          # the sparse blocks stay holes
            f.write(self.header)
            f.write(read)
            f.write(rng.randbytes(WRITE_BLOCKS * BLOCK))

    def fill(self):
        """Fill vdb's filesystem with our file until it is full; returns the
        bytes it took."""
        total = 0
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            for chunk in (1 << 20, 4096):
                buf = b"\xa5" * chunk
                while True:
                    try:
                        n = os.write(fd, buf)
                    except OSError:
                        break
                    total += n
                    if n < chunk:
                        break
        finally:
            os.close(fd)
        return total

    def free_bytes(self):
        st = os.statvfs(self.vdbfs)
        return st.f_bavail * st.f_frsize

    def unfill(self):
        try:
            os.unlink(self.filler)
        except FileNotFoundError:
            pass

    def punch(self, block):
        fd = os.open(self.vdb, os.O_WRONLY)
        try:
            punch_hole(fd, block * BLOCK, BLOCK)
        finally:
            os.close(fd)

    def check_vda(self):
        """(clean, e2fsck's output)."""
        r = subprocess.run(["e2fsck", "-fn", self.vda], capture_output=True, text=True)
        return r.returncode == 0, (r.stdout + r.stderr).strip()

    def check_vdb(self):
        """None if vdb's header and read region are as we wrote them and
        its size unchanged, else what is wrong."""
        size = os.path.getsize(self.vdb)
        if size != VDB_BLOCKS * BLOCK:
            return "vdb is %d bytes, was %d" % (size, VDB_BLOCKS * BLOCK)
        with open(self.vdb, "rb") as f:
            if f.read(BLOCK) != self.header:
                return "vdb's header changed"
            if md5(f.read(READ_BLOCKS * BLOCK)) != self.read_md5:
                return "vdb's read region changed"
        return None

    def remove(self, keep=False):
        """Unmount vdb's tmpfs and delete everything, or with keep, move
        vdb's image beside vda's first and delete nothing else."""
        self.unfill()
        if keep and os.path.exists(self.vdb):
            subprocess.run(["cp", "--sparse=always", self.vdb,
                            os.path.join(self.workdir, "vdb.img")])
        if self.mounted:
            r = subprocess.run(["umount", self.vdbfs], capture_output=True)
            if r.returncode == 0:
                self.mounted = False
        if keep:
            return
        for path in (self.vdb, self.vda):
            try:
                os.unlink(path)
            except OSError:
                pass
        for d in (self.vdbfs, self.workdir):
            try:
                os.rmdir(d)
            except OSError:
                pass


def md5(data):
    return hashlib.md5(data).hexdigest()


# --- The console -----------------------------------------------------------------

class Console:
    """The Guest's console: we read the Launcher's stdout line by line in a
    thread, check the output bursts, keep the Guest's latest figures, and
    let others wait for a line.  Writes go to the Launcher's stdin."""

    STAT = re.compile(r"^soak: stat up=([\d.]+) irq=(\d*)(.*)$")

    def __init__(self, proc, log=None):
        self.proc = proc
        self.log = log
        self.cond = threading.Condition()
        self.lines = []                 # every line "soak: ..." (the rest is boot)
        self.tail = []                  # the last lines of anything, for failures
        self.stats = []                 # (up, irq, {dev: (r, w, sr, sw)}, {loop: (n, e, b)})
        self.errors = []                # what went wrong, as we saw it
        self.out_next = {}              # out burst K -> next line number
        self.out_bursts = self.out_lines = 0
        self.stray = 0                  # other lines once the soak runs
        self.ready = False
        self._wlock = threading.Lock()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for raw in iter(self.proc.stdout.readline, b""):
            line = raw.decode(errors="replace").rstrip("\r\n")
            if self.log:
                self.log.write(line + "\n")
            with self.cond:
                self.tail = (self.tail + [line])[-60:]
                if line.startswith("soak: "):
                    # The output bursts are checked here and forgotten.
                    if not self._take(line):
                        self.lines.append(line)
                elif self.ready:
                    self.stray += 1
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def _take(self, line):
        """Note what a line says; True for a line of an output burst."""
        m = self.STAT.match(line)
        if m:
            devs, loops = {}, {}
            for key, val in re.findall(r" (\S+)=(\S+)", m.group(3)):
                nums = tuple(int(x) for x in val.split(","))
                (devs if key in ("vda", "vdb") else loops)[key] = nums
            self.stats.append((float(m.group(1)), int(m.group(2) or 0), devs, loops))
            return
        m = re.match(r"^soak: out (\d+) (\d+) (.*)$", line)
        if m:
            k, i, text = int(m.group(1)), int(m.group(2)), m.group(3)
            want = self.out_next.get(k, 0)
            if i != want or text != OUT_TEXT:
                self.errors.append("console output burst %d: line %d came as %r "
                                   "(expected line %d)" % (k, i, line[:120], want))
            self.out_next[k] = i + 1
            return True
        m = re.match(r"^soak: out-end (\d+) (\d+)$", line)
        if m:
            k, n = int(m.group(1)), int(m.group(2))
            got = self.out_next.pop(k, 0)
            if got != n:
                self.errors.append("console output burst %d: %d of %d lines" % (k, got, n))
            else:
                self.out_bursts += 1
                self.out_lines += n
            return True
        if line.startswith("soak: ERROR"):
            self.errors.append("Guest: " + line[len("soak: "):])
        elif line.startswith("soak: ready"):
            self.ready = True
        return False

    def send(self, text):
        """Write text to the Guest's console; False if the Launcher is gone."""
        with self._wlock:
            try:
                self.proc.stdin.write(text.encode())
                self.proc.stdin.flush()
                return True
            except (OSError, ValueError):
                return False

    def wait_line(self, pattern, timeout, start=0):
        """The first "soak: " line from index start matching pattern (a
        regex), waiting up to timeout seconds; None if none came (or the
        Launcher ended)."""
        rx = re.compile(pattern)
        deadline = now() + timeout
        with self.cond:
            while True:
                for line in self.lines[start:]:
                    m = rx.match(line)
                    if m:
                        return m
                start = len(self.lines)
                left = deadline - now()
                if left <= 0 or not self.reader.is_alive():
                    return None
                self.cond.wait(min(left, 1.0))

    def mark(self):
        with self.cond:
            return len(self.lines)

    def ask(self, command, pattern, timeout=REPLY_SECS):
        """Send a command line; wait for the answer matching pattern."""
        start = self.mark()
        if not self.send(command + "\n"):
            return None
        return self.wait_line(pattern, timeout, start)


# --- The Launcher's processes -------------------------------------------------------

def read_status(pid):
    """{"RssAnon": kB, ...} from /proc/PID/status, or None if it is gone."""
    try:
        with open("/proc/%d/status" % pid) as f:
            out = {}
            for line in f:
                key, _, val = line.partition(":")
                if key.startswith("Rss") or key == "State":
                    out[key] = val.split()[0] if key == "State" else int(val.split()[0])
            return out
    except OSError:
        return None


def code_cache(pid):
    """(resident kB, size kB) of the process's anonymous executable
    mappings: unicorn's buffer of translated Guest code (QEMU's TCG code
    buffer).  It fills as the Guest runs new code, until it is flushed and
    refilled: a cache bounded by its size, not a leak."""
    res = size = 0
    cur = False
    try:
        with open("/proc/%d/smaps" % pid) as f:
            for line in f:
                if line[0] in "0123456789abcdef" and "-" in line.split(" ", 1)[0]:
                    fields = line.split()
                    cur = "x" in fields[1] and len(fields) == 5
                    if cur:
                        lo, hi = (int(x, 16) for x in fields[0].split("-"))
                        size += (hi - lo) >> 10
                elif cur and line.startswith("Anonymous:"):
                    res += int(line.split()[1])
    except OSError:
        return None
    return res, size


class Mem(tuple):
    """One look at a process (kB): private RSS less the code cache, the
    code cache's resident part and its size, the shared Guest RAM it has
    resident, open fds."""
    __slots__ = ()
    private = property(lambda s: s[0])
    code = property(lambda s: s[1])
    code_size = property(lambda s: s[2])
    shmem = property(lambda s: s[3])
    fds = property(lambda s: s[4])


def count_fds(pid):
    try:
        return len(os.listdir("/proc/%d/fd" % pid))
    except OSError:
        return None


def holds_file(pid, path):
    real = os.path.realpath(path)
    try:
        fds = os.listdir("/proc/%d/fd" % pid)
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink("/proc/%d/fd/%s" % (pid, fd)) == real:
                return True
        except OSError:
            pass
    return False


def children_of(pid):
    """The pids whose parent is pid."""
    try:
        return sorted(p.pid for p in psutil.Process(pid).children())
    except psutil.Error:
        return []


def start_time(pid):
    """Field 22 of /proc/PID/stat (start time in ticks): tells a process
    from a later one given the same pid."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


class Procs:
    """The Launcher and its three children, by role: "launcher", "waker",
    "vda" and "vdb" (the block workers, known by the image each holds)."""

    ROLES = ("launcher", "waker", "vda", "vdb")

    def __init__(self, launcher_pid, disks):
        self.pids = {"launcher": launcher_pid}
        kids = children_of(launcher_pid)
        for pid in kids:
            if holds_file(pid, disks.vda):
                self.pids["vda"] = pid
            elif holds_file(pid, disks.vdb):
                self.pids["vdb"] = pid
            else:
                self.pids["waker"] = pid
        missing = [r for r in self.ROLES if r not in self.pids]
        if missing or len(kids) != 3:
            raise RuntimeError("the Launcher's children are %s: no %s"
                               % (kids, ", ".join(missing) or "single Waker"))
        self.started = {role: start_time(pid) for role, pid in self.pids.items()}
        self.samples = []               # (t, {role: (private kB, shmem kB, fds)})

    def sample(self, t):
        got = {}
        for role, pid in self.pids.items():
            st = read_status(pid)
            fds = count_fds(pid)
            code = code_cache(pid)
            if st is None or fds is None or code is None:
                continue
            private = st.get("RssAnon", 0) + st.get("RssFile", 0) - code[0]
            got[role] = Mem((private, code[0], code[1], st.get("RssShmem", 0), fds))
        self.samples.append((t, got))
        return got

    def left(self):
        """Roles whose process still exists (a zombie is gone for us)."""
        out = []
        for role, pid in self.pids.items():
            st = read_status(pid)
            if st and st.get("State") != "Z" and start_time(pid) == self.started[role]:
                out.append(role)
        return out


# --- Traffic from the host ------------------------------------------------------------

class Traffic:
    """The ping flood (FLOOD_SECS of every FLOOD_EVERY) and the two TCP
    servers the Guest's nc talks to, each in a thread, in the namespace."""

    def __init__(self, ns):
        self.ns = ns
        self.stop = threading.Event()
        self.flood_stop = threading.Event()
        self.lock = threading.Lock()
        self.ping_sent = self.ping_got = 0
        self.tcp_in = self.tcp_in_bytes = 0      # from the Guest, checked by us
        self.tcp_out = self.tcp_out_bytes = 0    # to the Guest (it checks)
        self.errors = []
        self.pool = os.urandom(1 << 20)
        self.servers = []
        for port, serve in ((PORT_FROM_GUEST, self._take), (PORT_TO_GUEST, self._give)):
            s = ns.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("0.0.0.0", port))
            s.listen(4)
            s.settimeout(0.5)
            self.servers.append(s)
            threading.Thread(target=self._serve, args=(s, serve), daemon=True).start()
        self.flooder = None

    def start_flood(self):
        self.flooder = threading.Thread(target=self._flood, daemon=True)
        self.flooder.start()

    def _flood(self):
        sock = icmp_socket(self.ns)
        while not self.flood_stop.is_set():
            try:
                sent, got, _ = flood(sock, GUEST_IP, FLOOD_SECS)
            except OSError:
                sent = got = 0
            with self.lock:
                self.ping_sent += sent
                self.ping_got += got
            self.flood_stop.wait(FLOOD_EVERY - FLOOD_SECS)
        sock.close()

    def _serve(self, lsock, serve):
        while not self.stop.is_set():
            try:
                conn, _ = lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conn.settimeout(REPLY_SECS)
            try:
                serve(conn)
            except OSError as e:
                with self.lock:
                    self.errors.append("TCP port %d: %s" % (lsock.getsockname()[1], e))
            finally:
                conn.close()

    def _take(self, conn):
        """The Guest's "SIZE MD5\\n" + data: check it, answer "ok SIZE"."""
        data = bytearray()
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = bytes(data).partition(b"\n")
        try:
            size, want = head.decode().split()
            size = int(size)
        except ValueError:
            size, want = -1, ""
        if size == len(body) and md5(body) == want:
            conn.sendall(b"ok %d\n" % size)
            with self.lock:
                self.tcp_in += 1
                self.tcp_in_bytes += size
        else:
            conn.sendall(b"bad\n")
            with self.lock:
                self.errors.append("TCP from the Guest: %d bytes, md5 %s; it said %r"
                                   % (len(body), md5(body), head[:80]))

    def _give(self, conn):
        size = random.randint(1, 256 << 10)
        off = random.randrange(len(self.pool) - size + 1)
        body = self.pool[off:off + size]
        conn.sendall(b"%d %s\n" % (size, md5(body).encode()) + body)
        conn.shutdown(socket.SHUT_WR)
        while conn.recv(4096):          # until the Guest's nc closes
            pass
        with self.lock:
            self.tcp_out += 1
            self.tcp_out_bytes += size

    def stop_flood(self):
        self.flood_stop.set()
        if self.flooder:
            self.flooder.join(FLOOD_SECS + 5)

    def close(self):
        self.stop_flood()
        self.stop.set()
        for s in self.servers:
            s.close()


# --- Faults ---------------------------------------------------------------------------

class Faults:
    """One fault every `every` seconds, in turn, in a thread of its own:
    SIGSTOP/SIGCONT of the Waker and of each block worker, console input
    bursts, ENOSPC windows on vdb's filesystem."""

    CYCLE = ("stop-waker", "input-burst", "stop-vda", "enospc", "stop-vdb", "input-burst")

    def __init__(self, console, procs, disks, every, hold):
        self.console, self.procs, self.disks = console, procs, disks
        self.every, self.hold = every, hold
        self.stop = threading.Event()
        self.done = {name: 0 for name in self.CYCLE}
        self.errors = []
        self.stopped_pid = None         # SIGSTOPped right now (for emergencies)
        self.enospc_filled = []         # bytes our filler took, each window
        self.k = 0
        self.cycled = threading.Event()  # every kind of fault has come once
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self.thread.start()

    def _run(self):
        do = {"stop-waker": self._stop, "stop-vda": self._stop, "stop-vdb": self._stop,
              "input-burst": self._burst, "enospc": self._enospc}
        i = 0
        while not self.stop.wait(self.every):
            name = self.CYCLE[i % len(self.CYCLE)]
            i += 1
            self.k += 1
            try:
                if do[name](name):
                    self.done[name] += 1
            except OSError as e:
                self.errors.append("fault %s: %s" % (name, e))
            if i == len(self.CYCLE):
                self.cycled.set()

    def _stop(self, name):
        pid = self.procs.pids[name.split("-")[1]]
        self.stopped_pid = pid
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(self.hold)
        finally:
            os.kill(pid, signal.SIGCONT)
            self.stopped_pid = None
        return True

    def _burst(self, name):
        k = self.k
        lines = "".join("in %d %d %s%s\n" % (k, i, OUT_TEXT, random.randbytes(8).hex())
                        for i in range(IN_LINES))
        m = self.console.ask("burst-in %d %d %s\n%s" % (k, IN_LINES, md5(lines.encode()),
                                                      lines.rstrip("\n")),
                             r"^soak: (ERROR )?in %d\b(.*)" % k)
        if m is None:
            self.errors.append("console input burst %d: no answer" % k)
            return False
        return m.group(1) is None       # the Guest counted its own error

    def _enospc(self, name):
        k = self.k
        hole = SPARSE0 + k % SPARSE_BLOCKS
        self.disks.punch(hole)
        try:
            filled = self.disks.fill()
            self.enospc_filled.append(filled)
            if self.disks.free_bytes() != 0:
                self.errors.append("ENOSPC %d: vdb's filesystem still has %d bytes free"
                                   % (k, self.disks.free_bytes()))
            on = self.console.ask("enospc-on %d" % k, r"^soak: enospc-on %d (.*)$" % k)
        finally:
            self.disks.unfill()
        off = self.console.ask("enospc-off %d" % k, r"^soak: enospc-off %d (.*)$" % k)
        ok = True
        if on is None or on.group(1) != "hole=eio alloc=ok":
            self.errors.append("ENOSPC %d, disk full: Guest said %s (want hole=eio alloc=ok)"
                               % (k, on and on.group(1)))
            ok = False
        if off is None or off.group(1) != "hole=ok verify=ok":
            self.errors.append("ENOSPC %d, space again: Guest said %s (want hole=ok verify=ok)"
                               % (k, off and off.group(1)))
            ok = False
        return ok

    def finish(self):
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join(2 * REPLY_SECS + 10)
        self.emergency()

    def emergency(self):
        """Whatever happens to us, never leave a process stopped."""
        pid = self.stopped_pid
        if pid is not None:
            try:
                os.kill(pid, signal.SIGCONT)
            except OSError:
                pass
        self.disks.unfill()


# --- The run ------------------------------------------------------------------------------

def rates(stats):
    """From the last two Guest stat lines: (req/s vda, req/s vdb, irq/s)."""
    if len(stats) < 2:
        return None
    (u0, i0, d0, _), (u1, i1, d1, _) = stats[-2], stats[-1]
    dt = u1 - u0
    if dt <= 0:
        return None

    def req(dev):
        a, b = d0.get(dev), d1.get(dev)
        return ((b[0] + b[1]) - (a[0] + a[1])) / dt if a and b else 0.0
    return req("vda"), req("vdb"), (i1 - i0) / dt


def window_stats(samples, lo, hi):
    """{role: (mean private MB, max fds, mean code cache MB)} over the
    samples with lo <= t < hi."""
    acc = {}
    for t, got in samples:
        if lo <= t < hi:
            for role, m in got.items():
                a = acc.setdefault(role, [0.0, 0, 0, 0.0])
                a[0] += m.private / 1024.0
                a[1] += 1
                a[2] = max(a[2], m.fds)
                a[3] += m.code / 1024.0
    return {role: (a[0] / a[1], a[2], a[3] / a[1]) for role, a in acc.items() if a[1]}


class Soak:
    def __init__(self, opts):
        self.o = opts
        self.failures = []
        self.summary = []
        self.pings = 0                  # "ping K" sent during the soak
        self.print = (lambda *a: None) if opts.quiet else self._print

    @staticmethod
    def _print(msg):
        print(msg, flush=True)

    def fail(self, why):
        self.failures.append(why)
        self.print("soak: FAIL: %s" % why)

    def run(self):
        """The whole soak; returns the exit status (0 passed, 1 failed, 2
        could not run)."""
        o = self.o
        workdir = tempfile.mkdtemp(prefix="pylguest-soak-")
        self.disks = Disks(workdir)
        self.log = open(o.log, "w") if o.log else None
        self.proc = self.faults = self.traffic = None
        try:
            try:
                self.disks.make()
            except (OSError, subprocess.CalledProcessError) as e:
                err = getattr(e, "stderr", b"") or b""
                print("bench/soak.py: can't run: making the disks: %s %s"
                      % (e, err.decode(errors="replace").strip()))
                return 2
            with NetNS("lgsoak") as ns:
                try:
                    ran = self.soak(ns)
                finally:
                    self.stop_everything()
            if ran:
                self.judge(self.console, self.procs, self.faults, self.traffic)
        finally:
            if self.log:
                self.log.close()
            self.disks.remove(o.keep)
            if o.keep:
                self.print("soak: kept the disk images in %s" % workdir)
        return 0 if not self.failures else 1

    def soak(self, ns):
        """Boot, soak, shut down; False if it never got going."""
        o = self.o
        disks = self.disks
        self.traffic = traffic = Traffic(ns)
        cmd = ns.argv([sys.executable, os.path.join(ROOT, "launcher.py"),
                       "--tunnet=%s" % HOST_IP, "--block=%s" % disks.vda,
                       "--block=%s" % disks.vdb, "--initrd=%s" % INITRD,
                       str(o.mem), o.kernel, "console=hvc0", "pyl.run=soak",
                       "pyl.ip=%s" % GUEST_IP, "pyl.soak_host=%s" % HOST_IP,
                       "pyl.soak_stat=%d" % max(1, int(o.interval / 2)),
                       "pyl.end=poweroff"])
        self.proc = proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        err_chunks = []
        err_reader = threading.Thread(
            target=lambda: err_chunks.extend(iter(lambda: proc.stderr.read(4096), b"")),
            daemon=True)
        err_reader.start()
        self.console = con = Console(proc, self.log)
        ready = con.wait_line(r"^soak: ready (.*)$", o.boot_secs)
        if ready is None:
            self.fail("the Guest never said \"soak: ready\"")
            return self.finish_early(con, err_chunks)
        self.print("soak: Guest ready: %s" % ready.group(1))
        started = ready.group(1).split()[0].split("=")[1].split(",")
        for want in LOOPS:
            if want not in started:
                self.fail("the Guest did not start its %s loop" % want)
        try:
            self.procs = procs = Procs(proc.pid, disks)
        except RuntimeError as e:
            self.fail(str(e))
            return self.finish_early(con, err_chunks)
        self.print("soak: pids: %s" % " ".join(
            "%s=%d" % (r, procs.pids[r]) for r in Procs.ROLES))
        if not wait_for_reply(icmp_socket(ns), GUEST_IP, 60):
            self.fail("the Guest never answered a ping")
        traffic.start_flood()
        self.faults = faults = Faults(con, procs, disks, o.fault_every, o.hold)
        faults.start()
        self.t0 = now()
        self.soak_loop(con, procs, faults, traffic)
        faults.finish()
        traffic.stop_flood()
        # The TCP servers serve on until the Guest's nc is done.
        self.shut_down(con, procs, traffic, err_chunks, err_reader)
        return True

    def stop_everything(self):
        """Whatever happened: no process left stopped, no filler file, no
        Launcher, no servers."""
        if self.faults:
            self.faults.emergency()
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.traffic:
            self.traffic.close()

    def finish_early(self, con, err_chunks):
        """Say what we saw of a soak that never got going; returns False."""
        time.sleep(0.5)
        self.print("soak: console, last lines:\n  " + "\n  ".join(con.tail[-30:]))
        self.print("soak: stderr: " + b"".join(err_chunks).decode(errors="replace")[-2000:])
        return False

    def soak_loop(self, con, procs, faults, traffic):
        o = self.o
        end = self.t0 + o.seconds
        # At least o.seconds, and at least one fault of every kind (a busy
        # machine slows the Guest, and with it the faults that need its
        # answer).
        while True:
            t = now() - self.t0
            got = procs.sample(t)
            self.pings += 1
            con.send("ping %d\n" % self.pings)
            self.progress(t, con, got, faults, traffic)
            if self.proc.poll() is not None:
                self.fail("the Launcher ended during the soak (status %s)" % self.proc.returncode)
                self.soak_secs = now() - self.t0
                return
            if now() >= end and (faults.cycled.is_set() or not faults.thread.is_alive()):
                self.soak_secs = now() - self.t0
                return
            left = end - now()
            time.sleep(min(o.interval, left) if left > 0 else o.interval)

    def progress(self, t, con, got, faults, traffic):
        with con.cond:
            stats = list(con.stats[-2:])
            nerr = len(con.errors)
        loops = stats[-1][3] if stats else {}
        r = rates(stats)
        parts = ["soak: %4ds" % t]
        parts.append(" ".join("%s %d/%d" % (name, v[0], v[1])
                              for name, v in sorted(loops.items()) if name in LOOPS))
        if r:
            parts.append("req/s vda %.0f vdb %.0f irq/s %.0f" % r)
        parts.append("faults %d" % sum(faults.done.values()))
        with traffic.lock:
            parts.append("ping %d/%d" % (traffic.ping_got, traffic.ping_sent))
        # RSS: private MB (+ the code cache); fds: launcher/waker/vda/vdb
        parts.append("rss MB " + " ".join(
            "%s %.1f%s" % (role, got[role].private / 1024.0,
                           "+%.1f" % (got[role].code / 1024.0) if role == "launcher" else "")
            for role in Procs.ROLES if role in got))
        parts.append("fds " + "/".join(str(got[role].fds) for role in Procs.ROLES if role in got))
        if nerr:
            parts.append("ERRORS %d" % nerr)
        self.print(" | ".join(parts))

    def shut_down(self, con, procs, traffic, err_chunks, err_reader):
        o = self.o
        self.last_sample = procs.sample(now() - self.t0)
        t = now()
        m = con.ask("stop", r"^soak: stopped errors=(\d+)$", STOP_SECS)
        self.stop_secs = now() - t
        if m is None:
            self.fail("the Guest did not stop its loops within %d s" % STOP_SECS)
            self.guest_errors = None
        else:
            self.guest_errors = int(m.group(1))
        t = now()
        pong = con.ask("ping final", r"^soak: pong final$", REPLY_SECS)
        self.pong_secs = now() - t
        if pong is None:
            self.fail("the Guest no longer answers on the console")
        # SIGTERM: the Launcher must go, and take its children with it.
        t = now()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.status = self.proc.wait(SHUTDOWN_SECS)
        except subprocess.TimeoutExpired:
            self.status = None
            self.fail("the Launcher did not end within %d s of SIGTERM" % SHUTDOWN_SECS)
        left = procs.left()
        while left and now() - t < SHUTDOWN_SECS:
            time.sleep(0.1)
            left = procs.left()
        self.term_secs = now() - t
        if left:
            self.fail("left behind after SIGTERM: %s" % ", ".join(
                "%s (pid %d)" % (r, procs.pids[r]) for r in left))
        con.reader.join(10)
        err_reader.join(10)
        self.stderr = b"".join(err_chunks).decode(errors="replace")
        last = self.stderr.strip().splitlines()[-1:] or [""]
        if self.status is not None and (self.status != 1 or last[0] != "lguest: Killed by SIGTERM"):
            self.fail("SIGTERM: status %s, stderr ends %r" % (self.status, last[0]))
        if "Traceback" in self.stderr:
            self.fail("a Python traceback:\n%s" % self.stderr[-3000:])

    def judge(self, con, procs, faults, traffic):
        o = self.o
        s = self.summary
        dur = self.soak_secs
        # Verification errors, wherever they were seen.
        for e in con.errors + faults.errors + traffic.errors:
            self.fail(e)
        with con.cond:
            stats = list(con.stats)
            lines = list(con.lines)
        final = stats[-1] if stats else (0, 0, {}, {})
        up, irq, devs, loops = final
        if self.guest_errors:
            self.fail("the Guest counted %d errors" % self.guest_errors)
        for name in LOOPS:
            if loops.get(name, (0,))[0] == 0:
                self.fail("the Guest's %s loop never completed a round" % name)
        # Kernel messages: I/O errors only on vdb's sparse blocks.
        kmsgs = [l[len("soak: dmesg "):] for l in lines if l.startswith("soak: dmesg ")]
        io_errors = 0
        for msg in kmsgs:
            m = re.search(r"I/O error, dev (\w+), sector (\d+)", msg)
            if m:
                sector = int(m.group(2))
                if m.group(1) == "vdb" and SPARSE0 * 128 <= sector < VDB_BLOCKS * 128:
                    io_errors += 1
                    continue
                self.fail("kernel: %s (outside vdb's sparse blocks)" % msg)
            elif BAD_DMESG.search(msg):
                self.fail("kernel: %s" % msg)
        pongs = {int(l.split()[2]) for l in lines if re.match(r"^soak: pong \d+$", l)}
        lost = sorted(set(range(1, self.pings + 1)) - pongs)
        if lost:
            self.fail("no answer to %d of %d console pings (the first: %d)"
                      % (len(lost), self.pings, lost[0]))
        windows = faults.done["enospc"]
        # Flat: first minute against last (a third of the run if short).
        span = 60.0 if dur >= 180 else dur / 3.0
        first = window_stats(procs.samples, 0, span)
        last = window_stats(procs.samples, dur - span, dur + 1)
        for role in Procs.ROLES:
            if role not in first or role not in last:
                self.fail("no RSS samples of the %s" % role)
                continue
            (r0, f0, _), (r1, f1, _) = first[role], last[role]
            if r1 > r0 + RSS_SLACK_MB:
                self.fail("%s: private RSS grew from %.1f MB to %.1f MB" % (role, r0, r1))
            if f1 > f0:
                self.fail("%s: open fds grew from %d to %d" % (role, f0, f1))
        ok, fsck = self.disks.check_vda()
        if not ok:
            self.fail("e2fsck -fn on vda:\n%s" % fsck)
        bad_vdb = self.disks.check_vdb()
        if bad_vdb:
            self.fail(bad_vdb)

        # The summary.
        def loop(name):
            n, e, b = loops.get(name, (0, 0, 0))
            return "%s %d rounds %d errors %.1f MB" % (name, n, e, b / 1e6)
        total_bytes = sum(v[2] for v in loops.values())
        s.append("soak: summary: %.0f s soak of a %d MB Linux Guest (%s), faults every %.0f s"
                 % (dur, o.mem, os.path.relpath(o.kernel, ROOT), o.fault_every))
        s.append("soak: Guest loops: " + ", ".join(loop(n) for n in LOOPS))
        reqs = {d: v[0] + v[1] for d, v in devs.items()}
        s.append("soak: requests: vda %d (%d reads, %d writes), vdb %d (%d reads, %d writes); "
                 "%.0f req/s; %d device interrupts (%.0f/s)"
                 % (reqs.get("vda", 0), *devs.get("vda", (0, 0))[:2],
                    reqs.get("vdb", 0), *devs.get("vdb", (0, 0))[:2],
                    sum(reqs.values()) / max(up, 1), irq, irq / max(up, 1)))
        s.append("soak: verified: %.1f MB by the Guest's loops and its control; by us: %d TCP "
                 "transfers from the Guest (%.1f MB), %d console bursts (%d lines); "
                 "sent it %d TCP transfers (%.1f MB), %d input bursts"
                 % (total_bytes / 1e6, traffic.tcp_in, traffic.tcp_in_bytes / 1e6,
                    con.out_bursts, con.out_lines, traffic.tcp_out, traffic.tcp_out_bytes / 1e6,
                    faults.done["input-burst"]))
        filled = faults.enospc_filled
        s.append("soak: faults: Waker stopped %d times, vda worker %d, vdb worker %d "
                 "(%.1f s each); %d ENOSPC windows (%d kernel I/O errors, all in vdb's sparse "
                 "blocks; vdb's tmpfs full after %.1f MB of ours), %d console input bursts; "
                 "ping flood %d/%d answered"
                 % (faults.done["stop-waker"], faults.done["stop-vda"], faults.done["stop-vdb"],
                    o.hold, windows, io_errors, sum(filled) / max(len(filled), 1) / 1e6,
                    faults.done["input-burst"], traffic.ping_got, traffic.ping_sent))
        both = [r for r in Procs.ROLES if r in first and r in last]
        s.append("soak: private RSS MB (less the code cache), mean of the first -> last %.0f s "
                 "(bound +%.0f MB): %s" % (span, RSS_SLACK_MB, ", ".join(
                     "%s %.1f -> %.1f" % (r, first[r][0], last[r][0]) for r in both)))
        end = self.last_sample
        s.append("soak: the Launcher's code cache (unicorn's translated code, a %d MB buffer) "
                 "%.1f -> %.1f MB; shared Guest RAM resident at the end, MB: %s"
                 % (end["launcher"].code_size // 1024 if "launcher" in end else 0,
                    first["launcher"][2] if "launcher" in both else 0,
                    last["launcher"][2] if "launcher" in both else 0,
                    ", ".join("%s %.1f" % (r, end[r].shmem / 1024.0)
                              for r in Procs.ROLES if r in end)))
        s.append("soak: open fds (max), first -> last: %s"
                 % ", ".join("%s %d -> %d" % (r, first[r][1], last[r][1]) for r in both))
        (_, a), (_, z) = procs.samples[0], procs.samples[-1]
        s.append("soak: at start -> end of the soak: %s" % ", ".join(
            "%s %.1f%s MB %d fds -> %.1f%s MB %d fds"
            % (r, a[r].private / 1024.0, "+%.1f" % (a[r].code / 1024.0) if r == "launcher" else "",
               a[r].fds, z[r].private / 1024.0,
               "+%.1f" % (z[r].code / 1024.0) if r == "launcher" else "", z[r].fds)
            for r in Procs.ROLES if r in a and r in z))
        s.append("soak: end: the Guest stopped in %.1f s with %s errors and answered the "
                 "console in %.1f s; SIGTERM -> status %s in %.1f s, %s; e2fsck vda %s; "
                 "vdb %s; %d other console lines"
                 % (self.stop_secs, self.guest_errors, self.pong_secs, self.status,
                    self.term_secs, "no process left" if not procs.left() else "processes LEFT",
                    "clean" if ok else "NOT CLEAN", "intact" if not bad_vdb else "CHANGED",
                    con.stray))
        firsts = "; ".join(f.splitlines()[0] for f in self.failures[:5])
        s.append("soak: %s" % ("PASSED" if not self.failures else
                              "FAILED (%d): %s" % (len(self.failures), firsts)))
        for line in s:
            print(line, flush=True)


def _interrupt(sig, frame):
    raise KeyboardInterrupt


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--seconds", type=float, help="instead of --minutes")
    ap.add_argument("--kernel", default=os.environ.get("KERNEL") or DEFAULT_KERNEL)
    ap.add_argument("--mem", type=int, default=128, help="Guest MB (default 128)")
    ap.add_argument("--interval", type=float, default=5.0, help="seconds between progress lines")
    ap.add_argument("--fault-every", type=float, default=10.0, help="seconds between faults")
    ap.add_argument("--hold", type=float, default=2.0, help="seconds a process stays SIGSTOPped")
    ap.add_argument("--boot-secs", type=float, default=240.0)
    ap.add_argument("--log", help="write the whole console output here")
    ap.add_argument("--keep", action="store_true", help="keep the disk images")
    ap.add_argument("--quiet", action="store_true", help="the summary only")
    o = ap.parse_args(argv)
    o.seconds = o.seconds if o.seconds is not None else o.minutes * 60
    o.kernel = os.path.abspath(o.kernel)
    why = why_not(o.kernel)
    if why:
        print("bench/soak.py: can't run: %s" % why)
        return 2
    initrd, why = initramfs()
    if why:
        print("bench/soak.py: can't run: no initramfs: %s" % why)
        return 2
    # SIGTERM to us, as ^C: unwind through the clean-ups.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return Soak(o).run()
    except KeyboardInterrupt:
        print("bench/soak.py: interrupted")
        return 1


if __name__ == "__main__":
    sys.exit(main())
