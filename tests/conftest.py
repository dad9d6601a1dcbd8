"""The one fixture module: where things are, how to run the Launcher as a user would,
and the small Guest-side helpers several test files share.

Every end-to-end test runs `launcher.py` as a separate process, exactly as the README
tells a user to (one helper does it: `Launcher`; `launch()` is its run-to-the-end
form), and judges only what the Guest and the user see: stdout, stderr, the exit
status, the terminal, the disk image, and the processes left behind.  Every process a
Launcher forks carries a tag in its environment, so when the Launcher is gone the
tests can tell whether anything it started is still running (`leftovers()`), without
ever looking at, or touching, anyone else's processes (only processes running this
checkout's launcher.py are looked at).

Markers (registered in pytest.ini): `root` (skipped with the reason unless we are root),
`net` (makes a network namespace; root too), `slow` (several seconds or more).
"""
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

# The suite starts Launchers as a user at a terminal does.  A shell that runs us
# in the background (`make test &`, a CI script's job) hands SIGINT and SIGQUIT
# down ignored, and an ignored signal stays ignored across exec -- which the
# Launcher rightly keeps (the nohup case of tests/test_exits.py) -- so our
# children get the defaults back; a test that wants one ignored says so.
for _sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP):
    if signal.getsignal(_sig) == signal.SIG_IGN:
        signal.signal(_sig, signal.default_int_handler if _sig == signal.SIGINT
                      else signal.SIG_DFL)

ROOT = Path(__file__).resolve().parent.parent
LAUNCHER = ROOT / "launcher.py"
GUEST = ROOT / "guest" / "guest.elf"
GUEST_PAE = ROOT / "guest" / "guest-pae.elf"      # the same Guest with PAE page tables
PYTHON = sys.executable
LINUX = ROOT.parent / "shared" / "linux"

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: The environment variable that marks every process a test's Launcher started.
TAG_VAR = "PYLGUEST_TEST_TAG"


def pytest_runtest_setup(item):
    """root / net tests skip, saying why, when we are not root."""
    if (item.get_closest_marker("root") or item.get_closest_marker("net")) \
            and os.geteuid() != 0:
        pytest.skip("needs root (run the suite as root to include it)")


def build_guest():
    """Build guest/guest.elf and guest-pae.elf (make -C guest) if one is missing;
    returns guest.elf's path."""
    if not GUEST.exists() or not GUEST_PAE.exists():
        subprocess.run(["make", "-s", "-C", str(ROOT / "guest")], check=True)
    return GUEST


@pytest.fixture(scope="session")
def guest_elf():
    return build_guest()


# --- processes -----------------------------------------------------------------------

def tagged(tag):
    """Pids of live (not zombie) processes running this checkout's launcher.py whose
    environment carries TAG_VAR=tag.  (Only those: nobody else's environment is
    read.)"""
    want = ("%s=%s" % (TAG_VAR, tag)).encode()
    ours = str(LAUNCHER).encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % name, "rb") as f:
                if ours not in f.read().split(b"\0"):
                    continue
            with open("/proc/%s/environ" % name, "rb") as f:
                env = f.read().split(b"\0")
            if want not in env:
                continue
            with open("/proc/%s/stat" % name, "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if state not in (b"Z", b"X"):
            found.append(int(name))
    return found


def gone_within(pids, seconds):
    """True once none of pids is running (zombies count as gone) within seconds."""
    deadline = time.monotonic() + seconds
    while True:
        alive = []
        for pid in pids:
            try:
                with open("/proc/%d/stat" % pid, "rb") as f:
                    state = f.read().rsplit(b")", 1)[1].split()[0]
            except OSError:
                continue
            if state not in (b"Z", b"X"):
                alive.append(pid)
        if not alive:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


class LauncherHung(AssertionError, subprocess.TimeoutExpired):
    """The Launcher outlived its time: a hang, and a hang is a failure."""

    def __init__(self, cmd, timeout, out, err):
        subprocess.TimeoutExpired.__init__(self, cmd, timeout, out, err)
        AssertionError.__init__(self, "Launcher still running after %ss\n--- stdout:\n%s\n"
                                "--- stderr:\n%s" % (timeout, out[-3000:], err[-3000:]))

    def __str__(self):
        return AssertionError.__str__(self)


class Launcher:
    """A Launcher run in the background as a user would start it:
    `python launcher.py ARGS` (under `prefix`, an argv such as `ip netns exec NAME` or
    `bash -c SCRIPT bash`, which runs its arguments, best by exec'ing them; python:
    the interpreter's argv).

    stdin: subprocess.DEVNULL (the default: end of input at once), subprocess.PIPE
    (write() and close_stdin()), an fd or file, or "pty": a fresh pseudo-terminal is
    stdin and stdout, as in a terminal window (then .pty_modes() reads its modes).
    stdout and stderr are collected as they come (.out, .err, wait_for()).

    finish() waits for the end and returns a CompletedProcess (text); it fails on a
    hang and, unless told otherwise, on any process of this Launcher's still running a
    few seconds after it exited.  Use as a context manager: whatever happens, the
    Launcher and what it started are gone afterwards (killed by pid).
    """

    def __init__(self, args, *, stdin=subprocess.DEVNULL, prefix=(), python=(PYTHON,),
                 env=None, cwd=ROOT):
        self.args = [*python, str(LAUNCHER), *map(str, args)]
        self.tag = uuid.uuid4().hex
        env = dict(os.environ if env is None else env)
        env[TAG_VAR] = self.tag
        self._out, self._err = bytearray(), bytearray()
        self._lock = threading.Lock()
        self._cursor = 0
        self.master = self.slave = None
        self.result = None
        stdout = subprocess.PIPE
        if stdin == "pty":
            import termios
            self.master, self.slave = os.openpty()
            self.modes_before = termios.tcgetattr(self.slave)
            stdin = stdout = self.slave
        self.proc = subprocess.Popen([*prefix, *self.args], cwd=cwd, env=env,
                                     stdin=stdin, stdout=stdout, stderr=subprocess.PIPE,
                                     start_new_session=self.master is not None)
        self.pid = self.proc.pid
        self._pumps = [threading.Thread(target=self._pump, args=(self.proc.stderr.fileno(),
                                                                 self._err), daemon=True)]
        src = self.master if self.master is not None else self.proc.stdout.fileno()
        self._pumps.append(threading.Thread(target=self._pump, args=(src, self._out),
                                            daemon=True))
        for t in self._pumps:
            t.start()

    def _pump(self, fd, buf):
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:
                return
            if not data:
                return
            with self._lock:
                buf += data

    # --- what it said -----------------------------------------------------------------
    @property
    def out(self):
        with self._lock:
            return self._out.decode(errors="replace")

    @property
    def err(self):
        with self._lock:
            return self._err.decode(errors="replace")

    def wait_for(self, text, timeout=30):
        """Wait until stdout shows text after the previous match; returns the line."""
        deadline = time.monotonic() + timeout
        while True:
            out = self.out
            at = out.find(text, self._cursor)
            if at >= 0:
                start = out.rfind("\n", 0, at) + 1
                end = out.find("\n", at)
                end = len(out) if end < 0 else end + 1
                self._cursor = at + len(text)
                return out[start:end]
            if self.proc.poll() is not None:
                for t in self._pumps:
                    t.join(0.5)
                if text in self.out[self._cursor:]:
                    continue
                raise AssertionError("%r not seen; the Launcher exited %s:\n%s\n%s"
                                     % (text, self.proc.returncode, self.out[-3000:],
                                        self.err[-3000:]))
            if time.monotonic() > deadline:
                raise AssertionError("%r not seen in %ss:\n%s\n%s"
                                     % (text, timeout, self.out[-3000:], self.err[-3000:]))
            time.sleep(0.01)

    # --- talking to it ----------------------------------------------------------------
    def write(self, data):
        data = data.encode() if isinstance(data, str) else data
        if self.master is not None:
            os.write(self.master, data)
        else:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()

    def close_stdin(self):
        if self.proc.stdin is not None:
            self.proc.stdin.close()

    def signal(self, sig):
        self.proc.send_signal(sig)

    @property
    def returncode(self):
        return self.proc.returncode

    def pty_modes(self):
        import termios
        return termios.tcgetattr(self.slave)

    def children(self):
        """Pids of the running processes this Launcher started (not itself)."""
        return [p for p in tagged(self.tag) if p != self.pid]

    def leftovers(self, grace=3.0):
        """Processes of this Launcher still running grace seconds after it exited."""
        deadline = time.monotonic() + grace
        while True:
            left = tagged(self.tag)
            if not left or time.monotonic() >= deadline:
                return left
            time.sleep(0.02)

    # --- the end ------------------------------------------------------------------------
    def finish(self, timeout=60, *, leftovers_ok=False):
        """Wait for the Launcher to exit; returns CompletedProcess(args, status,
        stdout, stderr).  A Launcher still running after timeout seconds is killed
        and raises LauncherHung; one that left a process running, AssertionError."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise LauncherHung(self.args, timeout, self.out, self.err) from None
        self._drain()
        self.result = subprocess.CompletedProcess(self.args, self.proc.returncode,
                                                  self.out, self.err)
        if not leftovers_ok:
            left = self.leftovers()
            if left:
                self.kill()
                raise AssertionError("the Launcher left processes running: %s\n%s"
                                     % (_describe(left), self.err[-3000:]))
        return self.result

    def _drain(self):
        """After the exit: wait for the pumps to read everything.  A pipe ends in EOF; a
        pty's master never does while we hold the slave, so there we wait until what
        the Launcher wrote has stopped arriving."""
        self._pumps[0].join(5)
        if self.master is None:
            self._pumps[1].join(5)
            return
        deadline = time.monotonic() + 5
        seen, quiet = -1, time.monotonic()
        while time.monotonic() - quiet < 0.2 and time.monotonic() < deadline:
            with self._lock:
                n = len(self._out)
            if n != seen:
                seen, quiet = n, time.monotonic()
            time.sleep(0.02)

    def kill(self):
        """SIGKILL the Launcher and everything it started, by pid."""
        for pid in [self.pid] + tagged(self.tag):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None or tagged(self.tag):
            self.kill()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        for fd in (self.master, self.slave):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        return False


def _describe(pids):
    out = []
    for pid in pids:
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as f:
                out.append("%d %s" % (pid, f.read().replace(b"\0", b" ").decode()))
        except OSError:
            out.append(str(pid))
    return "; ".join(out)


def launch(args, *, input=None, timeout=60, stdin=None, env=None):
    """Run the Launcher with `args` (a list) to the end; returns CompletedProcess (text).

    stdin defaults to /dev/null so the console sees end of input, as a
    non-interactive user's would; `input` (str or bytes) is fed through a pipe and
    then closed.  A Launcher that outlives `timeout` seconds is a hang (LauncherHung),
    and one that leaves a process of its own running is a failure too.
    """
    if input is not None:
        stdin = subprocess.PIPE
    elif stdin is None:
        stdin = subprocess.DEVNULL
    with Launcher(args, stdin=stdin, env=env) as run:
        if input is not None:
            def feed():
                try:
                    run.write(input)
                    run.close_stdin()
                except OSError:
                    pass
            threading.Thread(target=feed, daemon=True).start()
        return run.finish(timeout)


@pytest.fixture
def run_launcher(guest_elf):
    return launch


def wait_child_exit(pid, timeout, what):
    """Wait up to timeout seconds for our child pid to end; returns its exit
    status (negative: killed by that signal).  A child still running then is a
    failure naming `what`."""
    from waker import procs
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, st = os.waitpid(pid, os.WNOHANG)
        if done:
            procs.CHILDREN.pop(pid, None)
            return os.waitstatus_to_exitcode(st)
        time.sleep(0.01)
    raise AssertionError("%s still running" % what)


# --- what the user sees ------------------------------------------------------------------

def lgtest_lines(stdout):
    """{name: 'PASS' | 'FAIL ...' | 'SKIP ...'} from the Guest's lgtest lines."""
    out = {}
    for line in stdout.splitlines():
        if line.startswith("lgtest ") and ": " in line:
            name, verdict = line[len("lgtest "):].split(": ", 1)
            out[name] = verdict.strip()
    return out


def assert_no_traceback(proc):
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stdout, proc.stdout


def one_line_death(proc, text, status=1):
    """Exit `status`, nothing on stderr but one "lguest: ..." line containing
    text, no traceback.  Returns the line."""
    assert_no_traceback(proc)
    assert proc.returncode == status, (proc.returncode, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("lguest: "), proc.stderr
    assert text in lines[0], proc.stderr
    return lines[0]


#: What stderr shows before the last words when stdin is at end of input.
CONSOLE_EOF = "lguest: Failed to get console input, ignoring console."


def last_words(proc, status=None):
    """The Launcher's one line when the Guest ran: no traceback, nothing on stderr
    but the console's end-of-input warning (stdin at EOF) and then one "lguest: "
    line, which is returned.  status: the exit status it must have, if given."""
    assert_no_traceback(proc)
    if status is not None:
        assert proc.returncode == status, (proc.returncode, proc.stderr)
    lines = proc.stderr.splitlines()
    assert lines, "nothing on stderr (status %s)" % proc.returncode
    assert lines[-1].startswith("lguest: "), proc.stderr
    assert set(lines[:-1]) <= {CONSOLE_EOF}, proc.stderr
    return lines[-1]


# --- files -------------------------------------------------------------------------------

def make_image(path, size, *, seed=None):
    """Write a disk image of `size` bytes: random bytes from `seed`, or zeros."""
    import random
    if seed is None:
        data = bytes(size)
    else:
        data = random.Random(seed).randbytes(size)
    Path(path).write_bytes(data)
    return Path(path)


def elf32(segments, entry, *, e_type=2, machine=3, phentsize=32, phnum=None,
          ident_class=1):
    """An ELF32 little-endian executable.  segments: list of (p_type,
    p_paddr, data, memsz); each PT_LOAD's file data follows the headers.
    The virtual address is paddr + 0xC0000000, as a kernel's is."""
    ehsize, phsize = 52, 32
    off = ehsize + phsize * len(segments)
    phdrs, blobs = b"", b""
    for p_type, paddr, data, memsz in segments:
        phdrs += struct.pack("<IIIIIIII", p_type, off + len(blobs),
                             paddr + 0xC0000000, paddr, len(data), memsz, 7,
                             0x1000)
        blobs += data
    ident = b"\x7fELF" + bytes([ident_class, 1, 1]) + bytes(9)
    hdr = ident + struct.pack("<HHIIIIIHHHHHH", e_type, machine, 1, entry,
                              ehsize, 0, 0, ehsize, phentsize,
                              len(segments) if phnum is None else phnum,
                              40, 0, 0)
    return hdr + phdrs + blobs


def bzimage(payload, *, setup_sects=3, code32_start=0x100000, magic=b"HdrS"):
    """A bzImage-shaped file: boot sector + setup sectors with the setup
    header fields the Launcher reads, then the payload."""
    setup = bytearray((setup_sects or 4) * 512 + 512)
    setup[0x1F1] = setup_sects
    setup[0x202:0x206] = magic
    struct.pack_into("<I", setup, 0x214, code32_start)
    return bytes(setup) + payload


def tiny_bzimage_guest(code, *, data=b"", code32_offset=0x10):
    """A bzImage whose payload runs `code` (x86-32 machine code) at 1M + 0x10
    after eight ud2s, with `data` at 1M + 0x100 and lguest_data at 1M + 0x2000
    (syscall_vec = 0x80, as the Host insists).  Entering anywhere but
    code32_start lands on the ud2s, which kill the Guest."""
    payload = bytearray(0x3000)
    payload[0:0x10] = b"\x0F\x0B" * 8
    payload[0x10:0x10 + len(code)] = code
    payload[0x100:0x100 + len(data)] = data
    payload[0x2000 + 1388] = 0x80
    return bzimage(bytes(payload), setup_sects=2, code32_start=0x100000 + code32_offset)


def hcall_code(nr, ebx=0, ecx=0):
    """mov eax, nr; mov ebx, ebx; mov ecx, ecx; int $0x1f."""
    return (b"\xB8" + struct.pack("<I", nr) + b"\xBB" + struct.pack("<I", ebx)
            + b"\xB9" + struct.pack("<I", ecx) + b"\xCD\x1F")


#: LGUEST_INIT with lguest_data, as every tiny Guest starts.
TINY_INIT = hcall_code(1, 0x100000 + 0x2000)
#: "jmp ." : spin forever.
SPIN = b"\xEB\xFE"


# --- Linux guests (test_linux*.py) --------------------------------------------------------

#: Our initramfs for Linux guests (README "Running Linux"), made by the Makefile.
INITRD = ROOT / "images" / "linux-initrd.cpio.gz"
#: Seconds a whole Linux Guest run may take.  A boot is ~2 s on an idle machine;
#: this holds on a loaded one with room to spare, and still catches a hang.
RUN_TIMEOUT = 240


@pytest.fixture(scope="session")
def initrd():
    """Our initramfs, made (or brought up to date) by the Makefile."""
    r = subprocess.run(["make", "-s", "-C", str(ROOT), str(INITRD.relative_to(ROOT))],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail("make %s: %s" % (INITRD.name, (r.stderr or r.stdout).strip()))
    return INITRD


def linux_args(kernel, initrd, *switches, blocks=(), mem=64):
    """The Launcher's command line for a Linux Guest on our initramfs."""
    return (["--block=%s" % b for b in blocks]
            + ["--initrd=%s" % initrd, mem, kernel, "console=hvc0", *switches])


def script_image(path, text):
    """A disk image holding a shell script for pyl.script=, padded with
    NULs to whole pages (the initramfs drops them)."""
    data = text.encode()
    path.write_bytes(data + bytes(-len(data) % 4096))
    return path


def t_lines(out):
    """{key: rest} of the script's "t: key rest" lines (the last one wins)."""
    import re
    found = {}
    for line in out.splitlines():
        m = re.match(r"t: (\S+) ?(.*)$", line.strip())
        if m:
            found[m.group(1)] = m.group(2).strip()
    return found


# --- the Guest's half of a vring (for the device unit tests) ------------------------------

class FakeLg:
    """Stands in for the Host's /dev/lguest object in device unit tests: records
    the writes the Launcher makes."""

    def __init__(self):
        self.writes = []
        self.dropped = []

    def write(self, args):
        self.writes.append(tuple(args))

    def drop_translations(self, gpa, length):
        self.dropped.append((gpa, length))

    def irqs(self):
        from devices.virtqueue import LHREQ_IRQ
        return [a[1] for a in self.writes if a[0] == LHREQ_IRQ]


class GuestRing:
    """The Guest's half of a vring in mem at vq's pfn: adds descriptor
    chains to the avail ring and reads the used ring, like a driver."""

    def __init__(self, mem, vq):
        from devices.abi import PAGE_SIZE, vring_offsets
        self.mem, self.num = mem, vq.num
        base = vq.pfn * PAGE_SIZE
        d, a, u = vring_offsets(vq.num)
        self.desc, self.avail, self.used = base + d, base + a, base + u
        self.next_free = 0
        self.last_used = 0
        self.bump = 0x10000            # data buffers from here up

    def alloc(self, size, fill=None):
        addr = self.bump
        self.bump += (size + 15) & ~15
        if fill is not None:
            self.mem.view[addr:addr + size] = fill
        return addr

    def set_desc(self, i, addr, length, flags, nxt):
        from devices.abi import VRING_DESC
        VRING_DESC.pack_into(self.mem.view, self.desc + 16 * i, addr, length, flags, nxt)

    def avail_idx(self):
        return self.mem.view16[(self.avail + 2) >> 1]

    def set_avail_idx(self, idx):
        # One 16-bit store, as a Guest makes: a worker process may be
        # reading it right now (struct.pack_into would zero it first).
        self.mem.view16[(self.avail + 2) >> 1] = idx & 0xFFFF

    def set_avail_flags(self, flags):
        struct.pack_into("<H", self.mem.view, self.avail, flags)

    def offer(self, head):
        """Put head in the avail ring and bump avail->idx."""
        idx = self.avail_idx()
        self.mem.view16[(self.avail + 4 + 2 * (idx % self.num)) >> 1] = head
        self.set_avail_idx(idx + 1)

    def add(self, outs, ins):
        """Chain outs (readable) then ins (writable) [(addr, len), ...]
        into consecutive free descriptors and offer the chain; returns head."""
        from devices.abi import VRING_DESC_F_NEXT, VRING_DESC_F_WRITE
        bufs = [(a, l, 0) for a, l in outs] + [(a, l, VRING_DESC_F_WRITE) for a, l in ins]
        head = self.next_free
        for k, (addr, length, flags) in enumerate(bufs):
            i = (head + k) % self.num
            last = k == len(bufs) - 1
            self.set_desc(i, addr, length, flags | (0 if last else VRING_DESC_F_NEXT),
                          0 if last else (i + 1) % self.num)
        self.next_free = (head + len(bufs)) % self.num
        self.offer(head)
        return head

    def used_idx(self):
        return self.mem.view16[(self.used + 2) >> 1]

    def used_flags(self):
        return struct.unpack_from("<H", self.mem.view, self.used)[0]

    def get_used(self):
        """New used elements [(id, len), ...] since the last call."""
        out = []
        while self.last_used != self.used_idx():
            out.append(struct.unpack_from(
                "<II", self.mem.view, self.used + 4 + 8 * (self.last_used % self.num)))
            self.last_used = (self.last_used + 1) & 0xFFFF
        return out


def parse_device_page(page):
    """What lguest_device.c sees: a list of dicts, one per device.  An independent
    reading of the page, written from the Guest's side (scan_devices(), lg_vq(),
    lg_features(), lg_config(), desc_size(), lg_get_features())."""
    from devices.abi import PAGE_SIZE
    devs = []
    i = 0
    while i < PAGE_SIZE:
        typ, num_vq, feature_len, config_len, status = struct.unpack_from("5B", page, i)
        if typ == 0:
            break
        p = i + 5
        vqs = []
        for _ in range(num_vq):
            vqs.append(struct.unpack_from("<HHI", page, p))
            p += 8
        host_feat = bytes(page[p:p + feature_len])
        guest_feat = bytes(page[p + feature_len:p + 2 * feature_len])
        p += 2 * feature_len
        config = bytes(page[p:p + config_len])
        features = 0
        for bit in range(min(feature_len * 8, 32)):
            if host_feat[bit // 8] & (1 << (bit % 8)):
                features |= 1 << bit
        devs.append(dict(offset=i, type=typ, status=status, vqs=vqs,
                         feature_len=feature_len, features=features,
                         host_feat=host_feat, guest_feat=guest_feat,
                         config=config))
        i += 5 + num_vq * 8 + 2 * feature_len + config_len
    return devs


def page_of(devices):
    """The device page of a DeviceList, as a memoryview."""
    from devices.abi import PAGE_SIZE
    return devices.mem.view[devices.descpage:devices.descpage + PAGE_SIZE]


# --- --stats -----------------------------------------------------------------------

def guest_hcalls(stdout):
    """{NAME: (trap, async)} from our Guest's lghcalls=1 lines."""
    return {m.group(1): (int(m.group(2)), int(m.group(3))) for m in re.finditer(
        r"^hcalls: \d+ (\w+) trap=(\d+) async=(\d+)$", stdout, re.M)}


def host_hcalls(stderr):
    """{NAME: (trap, async)} from the Hypercalls table of --stats."""
    table = stderr.split("Hypercalls (", 1)[1].split("\n\n", 2)[2]
    out = {}
    for line in table.splitlines():
        m = re.match(r"\s+LHCALL_(\w+)\s+(\d+)\s+(\d+)\s+(\d+)$", line)
        if not m:
            break
        assert int(m.group(2)) + int(m.group(3)) == int(m.group(4))
        out[m.group(1)] = (int(m.group(2)), int(m.group(3)))
    return out
