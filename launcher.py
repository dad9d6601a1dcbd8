#!/usr/bin/env python3
"""The Launcher: lays out the Guest's "physical" memory, loads the kernel,
describes the devices, then runs the Guest by reading /dev/lguest over and
over.  This is Documentation/lguest/lguest.c of Linux 2.6.24 in Python; the
devices live in devices/, the Waker in waker/, and "/dev/lguest" (the Host)
is the Python object in host/.

Read it beside the C: each function's docstring names its counterpart.

    launcher.py [--verbose] [--tunnet=(IP|bridge:NAME)] [--block=FILE]
                [--initrd=FILE] [--trace=FILE [--trace-events=N]] [--stats]
                MEM_MB KERNEL [kernel args...]

--trace and --stats are ours, not the C Launcher's (lgtrace/: watch the Host
work, in a Perfetto trace and a `perf kvm stat`-like table).

Exit status: 0 when the Guest powered itself off, 2 after three ^C within a
second on the console (or a SIGINT), 1 for every other death (a one-line
"lguest: ..." on stderr, never a Python traceback).
"""

import os
import signal
import sys


# --- Before anything else ------------------------------------------------------
#
# Two things must happen before the Launcher opens a single file or imports
# anything that might: a closed 0, 1 or 2 must not be handed out to one of our
# own descriptors (the disk image on fd 1 would receive the Guest's console
# output), and the signals that end us must wait for the thread that handles
# them, so none of them can land in the middle of an import or of the way out.

#: The signals that end the Launcher.
FATAL_SIGNALS = (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM)
#: The ones we handle: those we inherited ignored stay ignored, as they did for
#: the C Launcher, which installed no handlers at all (nohup; a background job
#: of a shell script has SIGINT and SIGQUIT ignored).
_SIGNALS = {sig for sig in FATAL_SIGNALS if signal.getsignal(sig) != signal.SIG_IGN}
#: The signal mask we were started with, for the restart's exec.
_ORIG_MASK = None


def _reserve_std_fds():
    """Put /dev/null in place of a closed stdin, stdout or stderr.  stdin then
    reads as end of input; stdout is opened read-only, so the first write to it
    fails as a write to a closed descriptor does (EBADF: the C's behaviour,
    minus the danger); stderr goes nowhere, and the Guest still runs."""
    for fd, flags in ((0, os.O_RDONLY), (1, os.O_RDONLY), (2, os.O_WRONLY)):
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        try:
            new = os.open(os.devnull, flags)
        except OSError:
            os._exit(1)             # no /dev/null and no stderr: nothing to say
        if new != fd:
            os.dup2(new, fd)
            os.close(new)
        os.set_inheritable(fd, True)
    # Python set these to None if their fds were closed when it started.
    if sys.stdout is None:
        sys.stdout = open(1, "w", closefd=False)
    if sys.stderr is None:
        sys.stderr = open(2, "w", closefd=False)


def _block_signals():
    """Hold the fatal signals until _signal_thread() takes them."""
    global _ORIG_MASK
    _ORIG_MASK = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)


#: The modules we need from the virtualenv, by import name.
REQUIREMENTS = ("unicorn", "elftools")


def _missing_module(name):
    """The one line for `python3 launcher.py` outside the virtualenv."""
    here = os.path.dirname(os.path.abspath(__file__))
    python = os.path.join(here, ".venv", "bin", "python")
    rel = os.path.relpath(python)
    return ("No Python module named '%s': run the Launcher with the project's "
            "virtualenv, %s launcher.py (make sets it up)"
            % (name, rel if not rel.startswith("../..") else python))


def _check_requirements():
    """Find (without importing) what the packages below import at once; say
    how to run us, in one line, if it isn't there."""
    import importlib.util
    for name in REQUIREMENTS:
        try:
            missing = importlib.util.find_spec(name) is None
        except (ImportError, OSError, ValueError):
            missing = False         # can't tell here: let the import say
        if missing:
            try:
                os.write(2, ("lguest: %s\n" % _missing_module(name)).encode())
            except OSError:
                pass
            os._exit(1)


if __name__ == "__main__":
    _block_signals()
    _reserve_std_fds()
    _check_requirements()

import argparse                 # noqa: E402
import stat                     # noqa: E402
import threading                # noqa: E402
import time                     # noqa: E402

# Run from anywhere: the packages sit beside this file.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from devices.abi import DEVICE_PAGES, PAGE_SIZE, U16, U32      # noqa: E402
from devices.errors import LauncherError, c_hex, err, errx     # noqa: E402
import lgtrace                                                 # noqa: E402
from lgtrace.record import DEFAULT_EVENTS, RING_RECORDS, event_limit  # noqa: E402

# --- Small helpers ---------------------------------------------------------

#: --verbose: like the C, both a global flag and the function below.
VERBOSE = False


def verbose(fmt, *args):
    """printf() to stdout when --verbose was given; mirrors the C's verbose()
    macro.  Flushed at once so it interleaves sanely with Guest output."""
    if VERBOSE:
        try:
            sys.stdout.write(fmt % args if args else fmt)
            sys.stdout.flush()
        except OSError:
            err("Writing to stdout")


def c_ptr(value):
    """printf("%p") as glibc prints it: "(nil)" for 0, else 0x... ."""
    return "%#x" % value if value else "(nil)"


def page_align(addr):
    """Round addr up to a page boundary; mirrors page_align() in lguest.c."""
    return (addr + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


def ram_size(mem):
    """The Guest's RAM in bytes: the mapping minus the device pages above it
    (the C kept this as main()'s "mem")."""
    return mem.size - DEVICE_PAGES * PAGE_SIZE


def open_or_die(name, flags=os.O_RDONLY):
    """os.open(), or die "Failed to open NAME: <strerror>"; mirrors
    open_or_die() in lguest.c.  O_NONBLOCK too: a FIFO given as a kernel or
    initrd must not hang us in open() waiting for a writer (we read files by
    offset, and a FIFO then fails with "Illegal seek")."""
    try:
        return os.open(name, flags | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        err("Failed to open %s" % name)


# --- Loading the kernel ------------------------------------------------------
#
# The Guest's physical address N is byte N of mem.view, so "loading" is
# reading file data straight into slices of that view (os.preadv into a
# memoryview: no intermediate copy, the way the C mmap()ed or pread() it).

# struct boot_params offsets (Documentation/x86/zero-page.txt, boot.txt);
# DESIGN §4 lists the ones we fill.
BP_E820_ENTRIES = 0x1E8
BP_SETUP_SECTS = 0x1F1
BP_HEADER = 0x202              # "HdrS"
BP_VERSION = 0x206
BP_TYPE_OF_LOADER = 0x210
BP_LOADFLAGS = 0x211
BP_CODE32_START = 0x214
BP_RAMDISK_IMAGE = 0x218
BP_RAMDISK_SIZE = 0x21C
BP_CMD_LINE_PTR = 0x228
BP_KERNEL_ALIGNMENT = 0x230
BP_HARDWARE_SUBARCH = 0x23C
BP_E820_MAP = 0x2D0
BOOT_PARAMS_SIZE = 4096        # sizeof(struct boot_params): one page

KEEP_SEGMENTS = 0x40           # loadflags: don't reload the segment registers
E820_RAM = 1
BOOT_PROTOCOL = 0x207          # 2.07: the version that knows hardware_subarch
LOADER_UNKNOWN = 0xFF          # type_of_loader "undefined": that's us
SUBARCH_LGUEST = 1             # hardware_subarch: tells startup_32 it's lguest
KERNEL_ALIGNMENT = 0x1000000   # what a relocatable bzImage aligns itself to
BZIMAGE_LOAD = 0x100000        # modern bzImages are loaded at 1M
CMDLINE_ADDR = 0x1000          # the command line goes just after boot_params
CMDLINE_MAX = 2048             # x86 COMMAND_LINE_SIZE, terminating NUL included

# ELF32 header facts map_elf() checks (elf.h).
ELF_MAGIC = b"\x7fELF"
ELF32_PHDR_SIZE = 32
ELF32_EHDR_SIZE = 52


def _read_into(fd, view, offset, what):
    """Fill view (a memoryview of Guest memory) from fd at offset; die the
    C's way on a short read.  Mirrors the pread() fallback of map_at()."""
    try:
        got = os.preadv(fd, [view], offset)
    except OSError:
        err("Reading %s" % what)
    if got != len(view):
        errx("Reading offset %u len %u gave %d" % (offset, len(view), got))


def map_elf(mem, fd):
    """Load the PT_LOAD segments of the ELF vmlinux open on fd into Guest
    memory at their *physical* addresses (p_paddr: the Guest maps itself to
    the virtual ones) and return the entry point e_entry.  Mirrors map_elf()
    in lguest.c, with pyelftools reading the headers.

    Dies "Malformed elf header" unless it is an x86-32 executable with a sane
    number of correctly sized program headers (the C's checks), and refuses
    a segment that doesn't fit in the Guest's RAM (the C would have written
    past it), and a kernel whose entry point is not in the file data of a
    loaded segment (nothing to run).  Returns (entry, end): end is the top of
    the loaded image."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    f = os.fdopen(os.dup(fd), "rb")
    try:
        try:
            elf = ELFFile(f)
            hdr = elf.header
            if (elf.elfclass != 32
                    or hdr["e_type"] != "ET_EXEC"
                    or hdr["e_machine"] != "EM_386"
                    or hdr["e_phentsize"] != ELF32_PHDR_SIZE
                    or hdr["e_phnum"] < 1
                    or hdr["e_phnum"] > 65536 // ELF32_PHDR_SIZE):
                errx("Malformed elf header")
            # Read every program header before loading any of them, so a
            # truncated table is "Malformed", not half a kernel.
            phdrs = [elf.get_segment(i).header for i in range(hdr["e_phnum"])]
            entry = hdr["e_entry"]
        except (ELFError, ValueError, OSError, EOFError, KeyError):
            errx("Malformed elf header")
        except Exception as e:            # construct's StreamError and kin
            if isinstance(e, LauncherError):
                raise
            errx("Malformed elf header")
    finally:
        f.close()

    ram = ram_size(mem)
    end = 0
    entered = False
    for i, ph in enumerate(phdrs):
        # Only loadable segments: a kernel also has a NOTE one, and
        # GNU_STACK, which take no memory.
        if ph["p_type"] != "PT_LOAD":
            continue
        paddr, filesz, memsz = ph["p_paddr"], ph["p_filesz"], ph["p_memsz"]
        verbose("Section %i: size %i addr %s\n", i, memsz, c_ptr(paddr))
        top = paddr + max(filesz, memsz)
        if top > ram:
            errx("Section %i (addr %#x, size %#x) doesn't fit in %u MB of memory"
                 % (i, paddr, max(filesz, memsz), ram >> 20))
        # The bss part (memsz beyond filesz) is already zero: fresh pages.
        if filesz:
            _read_into(fd, mem.view[paddr:paddr + filesz], ph["p_offset"],
                       "kernel segment %i" % i)
        end = max(end, top)
        if paddr <= entry < paddr + filesz:
            entered = True
    # A kernel whose entry point lies in no loaded bytes would run zeroes (or
    # whatever is there) until something kills it, maybe a minute later.
    if not entered:
        errx("Kernel entry point %#x is outside every loaded segment" % entry)
    return entry, end


def load_bzimage(mem, fd):
    """Load a bzImage: check the "HdrS" magic of its setup header, skip the
    setup sectors and read the rest (the self-decompressing 32-bit part) to
    physical 1M.  Returns (code32_start, end).  Mirrors load_bzimage() in
    lguest.c; dies "This doesn't look like a bzImage to me" without the magic,
    and refuses an image too big for the Guest's RAM and one with nothing to
    run: no payload, a payload of zeroes, or code32_start outside it."""
    try:
        header = os.pread(fd, BOOT_PARAMS_SIZE, 0)
    except OSError:
        err("Reading kernel")
    if header[BP_HEADER:BP_HEADER + 4] != b"HdrS":
        errx("This doesn't look like a bzImage to me")
    # Boot protocol: a setup_sects of 0 really means 4 (ancient images).
    setup_sects = header[BP_SETUP_SECTS] or 4
    offset = (setup_sects + 1) * 512
    size = max(0, os.fstat(fd).st_size - offset)
    if BZIMAGE_LOAD + size > ram_size(mem):
        errx("bzImage payload (%u bytes) doesn't fit in %u MB of memory"
             % (size, ram_size(mem) >> 20))
    if not size:
        errx("bzImage has no payload after its %u setup sectors" % setup_sects)
    payload = mem.view[BZIMAGE_LOAD:BZIMAGE_LOAD + size]
    _read_into(fd, payload, offset, "kernel")
    if _all_zero(payload):
        errx("bzImage payload (%u bytes) is all zeros" % size)
    entry = U32.unpack_from(header, BP_CODE32_START)[0]
    if not BZIMAGE_LOAD <= entry < BZIMAGE_LOAD + size:
        errx("bzImage code32_start %#x is outside its payload (%#x-%#x)"
             % (entry, BZIMAGE_LOAD, BZIMAGE_LOAD + size))
    return entry, BZIMAGE_LOAD + size


def _all_zero(view, chunk=1 << 16):
    """Whether a memoryview holds nothing but zero bytes (a real kernel shows
    otherwise in its first chunk)."""
    zero = bytes(chunk)
    for at in range(0, len(view), chunk):
        piece = view[at:at + chunk]
        if piece != zero[:len(piece)]:
            return False
    return True


def load_kernel(mem, fd):
    """Load the kernel open on fd, an ELF vmlinux or a bzImage, and return
    (entry, end): the Guest-physical entry point and the top of the loaded
    image.  Mirrors load_kernel() in lguest.c: "\\177ELF" means ELF,
    anything else had better be a bzImage."""
    try:
        magic = os.pread(fd, ELF32_EHDR_SIZE, 0)
    except OSError:
        err("Reading kernel")
    if magic[:4] == ELF_MAGIC:
        if len(magic) < ELF32_EHDR_SIZE:
            errx("Malformed elf header")
        return map_elf(mem, fd)
    return load_bzimage(mem, fd)


def load_initrd(mem, name, kernel_end=0):
    """Read the initrd file name into the top of the Guest's RAM, page
    aligned, and return its page-aligned size (the C's "len": ramdisk_size
    gets that).  Mirrors load_initrd() in lguest.c.  Refuses an initrd that
    doesn't fit between the kernel (kernel_end) and the top of RAM."""
    ram = ram_size(mem)
    fd = open_or_die(name)
    try:
        try:
            st = os.fstat(fd)
        except OSError:
            err("fstat() on initrd '%s'" % name)
        # Its size says how much to load: a FIFO or a device has none.
        if not stat.S_ISREG(st.st_mode):
            errx("initrd %s is not a regular file" % name)
        st_size = st.st_size
        length = page_align(st_size)
        if length > ram or ram - length < kernel_end:
            errx("initrd %s (%u bytes) doesn't fit in %u MB of memory"
                 % (name, st_size, ram >> 20))
        where = ram - length
        if st_size:
            _read_into(fd, mem.view[where:where + st_size], 0,
                       "initrd %s" % name)
    finally:
        os.close(fd)
    verbose("mapped initrd %s size=%u @ %s\n", name, length, c_ptr(mem.base + where))
    return length


def setup_boot_params(mem, cmdline, initrd_size=0):
    """Fill boot_params at Guest-physical 0 and the kernel command line at
    0x1000, as main() in lguest.c does (DESIGN §4 gives every field).

    cmdline is a list of str (the kernel arguments), joined with spaces.
    Dies if the command line doesn't fit the kernel's 2048 bytes."""
    ram = ram_size(mem)
    bp = mem.view[0:BOOT_PARAMS_SIZE]
    # One E820 region: all of RAM.  The device pages above it are not RAM:
    # the Guest finds them through the lguest bus, not the memory map.
    bp[BP_E820_ENTRIES] = 1
    e820 = U32.size * 5    # struct e820entry { u64 addr; u64 size; u32 type }
    bp[BP_E820_MAP:BP_E820_MAP + e820] = (
        (0).to_bytes(8, "little") + ram.to_bytes(8, "little")
        + E820_RAM.to_bytes(4, "little"))
    if initrd_size:
        U32.pack_into(bp, BP_RAMDISK_IMAGE, ram - initrd_size)
        U32.pack_into(bp, BP_RAMDISK_SIZE, initrd_size)
    # 0xFF, "unknown loader": the C set it only with an initrd; DESIGN
    # says always, which is what Linux's boot protocol asks of a loader.
    bp[BP_TYPE_OF_LOADER] = LOADER_UNKNOWN
    line = " ".join(cmdline).encode("utf-8", "surrogateescape")
    if len(line) >= CMDLINE_MAX:
        errx("Kernel command line too long (%u bytes, at most %u)"
             % (len(line), CMDLINE_MAX - 1))
    mem.view[CMDLINE_ADDR:CMDLINE_ADDR + len(line) + 1] = line + b"\0"
    U32.pack_into(bp, BP_CMD_LINE_PTR, CMDLINE_ADDR)
    U16.pack_into(bp, BP_VERSION, BOOT_PROTOCOL)
    U32.pack_into(bp, BP_HARDWARE_SUBARCH, SUBARCH_LGUEST)
    bp[BP_LOADFLAGS] |= KEEP_SEGMENTS
    U32.pack_into(bp, BP_KERNEL_ALIGNMENT, KERNEL_ALIGNMENT)


def tell_kernel(mem, start):
    """Open "/dev/lguest" and initialize the Guest: LHREQ_INITIALIZE with the
    base of Guest memory, the page frame limit and the entry point.  Returns
    the LguestDev.  Mirrors tell_kernel() in lguest.c.

    3.16 ABI, not 2.6.24's: the arguments are (base, pfnlimit, start), with
    no pgdir, because the Launcher builds no page tables any more (the Host
    gives an identity map until the Guest's first NEW_PGTABLE)."""
    from host import LguestDev
    from host.abi import LHREQ_INITIALIZE

    verbose("Guest: %s - %s (%s)\n", c_ptr(mem.base),
            c_ptr(mem.base + mem.guest_limit), c_hex(mem.guest_limit))
    try:
        lg = LguestDev()
    except OSError:
        err("Failed to open /dev/lguest")
    try:
        lg.write((LHREQ_INITIALIZE, mem.base, mem.guest_limit // PAGE_SIZE,
                  start))
    except (ValueError, OSError) as e:
        errx("Writing to /dev/lguest: %s" % (e or "Invalid argument"))
    return lg


def _memory_limited():
    """Whether a limit could keep the Host from reserving its engines' address
    space: ulimit -v (RLIMIT_AS), ulimit -d (RLIMIT_DATA, which counts private
    mappings), or strict overcommit."""
    import resource
    for res in (resource.RLIMIT_AS, resource.RLIMIT_DATA):
        if resource.getrlimit(res)[0] != resource.RLIM_INFINITY:
            return True
    try:
        with open("/proc/sys/vm/overcommit_memory") as f:
            return f.read().strip() == "2"
    except OSError:
        return False


#: Address space probe_host() wants left over once the Host's engines exist:
#: a further engine's code buffer (the Host's start-up self-test runs a
#: scratch engine beside the Guest's; in the probe it has come and gone, and
#: its thread found a dead thread's stack to reuse, which the Launcher won't)
#: and 64 MiB for thread stacks and malloc.
PROBE_HEADROOM = (1 << 30) + (64 << 20)


def probe_host(mem, start):
    """Make sure tell_kernel() will live through creating the Host's engines,
    when a limit makes that doubtful.  unicorn reserves a 1 GiB code buffer
    for each engine and, when it can't, prints a line and calls exit(1) from
    C: no exception, no clean-up, no "lguest:" line.  So a throwaway child
    (its address space a copy of ours) does exactly what tell_kernel() is
    about to do; if unicorn ends it, we die saying so.  Costs a fork and an
    engine (about 15 ms), and only under a limit."""
    if not _memory_limited():
        return
    from host import LguestDev
    from host.abi import LHREQ_INITIALIZE
    from waker.procs import CHILDREN, restore_signals, set_pdeathsig

    try:
        r, w = os.pipe()
    except OSError:
        err("Creating a pipe for the Host probe")
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    parent = os.getpid()
    try:
        pid = os.fork()
    except OSError:
        err("forking")
    if pid == 0:
        # Not fork_child(): this is no device process (no trace ring for it,
        # no descriptors to drop: it lives for a few milliseconds).
        status = 3                  # a Python error: tell_kernel() will meet
        try:                        # it too, and say it
            set_pdeathsig()
            if os.getppid() == parent:
                restore_signals()
                lgtrace.on = False          # a throwaway Host: nothing to record
                os.dup2(w, 2)               # unicorn's last words, for our message
                LguestDev().write((LHREQ_INITIALIZE, mem.base,
                                   mem.guest_limit // PAGE_SIZE, start))
                # Room left for what the real one needs beyond this (above).
                status = 4
                import mmap
                mmap.mmap(-1, PROBE_HEADROOM,
                          flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS).close()
                status = 0
        except BaseException:
            pass
        os._exit(status)
    CHILDREN[pid] = "probe"
    os.close(w)
    said = b""
    while True:
        try:
            data = os.read(r, 4096)
        except InterruptedError:
            continue
        if not data:
            break
        said = (said + data)[-4096:]
    os.close(r)
    _, status = os.waitpid(pid, 0)
    CHILDREN.pop(pid, None)
    code = os.waitstatus_to_exitcode(status)
    if code in (0, 3):
        return
    if code == 4:
        errx("Not enough address space for the Host: each unicorn engine "
             "reserves 1 GiB (see ulimit -v and -d)")
    why = [l for l in said.decode(errors="replace").splitlines() if l.strip()]
    why = why[-1].strip() if why else (
        "exit status %d" % code if code > 0 else
        "killed by %s" % signal.Signals(-code).name)
    errx("Cannot create the Guest's CPU: unicorn: %s (not enough address "
         "space? see ulimit -v and -d)" % why)


# --- Running the Guest --------------------------------------------------------

class GuestPoweredOff(Exception):
    """The Guest said SHUTDOWN: carries the status to exit with."""

    def __init__(self, reason, status):
        super().__init__(reason)
        self.status = status


class GuestRestart(Exception):
    """The Guest asked to be rebooted (LGUEST_SHUTDOWN_RESTART)."""


def run_guest(lg, devices):
    """Run the Guest until it dies: read() from "/dev/lguest"; a NOTIFY
    address goes to handle_output(), a BREAK (EAGAIN, the Waker saw input)
    to handle_input() and then the BREAK is cleared to release the Waker.
    Mirrors run_guest() in lguest.c.  Never returns: raises GuestPoweredOff
    (power down: status 0), GuestRestart, or LauncherError with the reason."""
    from host import GuestDied, WakerDied
    from host.abi import LHREQ_BREAK

    # While the Guest is halted, the Host waits for our input fds as well as for
    # the Waker's BREAK (an extension of ours: see LguestDev.wake_on_input).
    lg.wake_on_input(devices.infds)
    while True:
        try:
            addr = lg.read()
        except BlockingIOError:
            # The Waker wanted us to look at some input.  Service it, then
            # unset the BREAK so the Waker can go back to watching.
            devices.handle_input(lg)
            try:
                lg.write((LHREQ_BREAK, 0))
            except (ValueError, OSError):
                err("Resetting break")
            continue
        except OSError:
            # As the C's run_guest(): any other error from read() ends us.  (Ours
            # can be the Host's first read() making its wake-up pipes: EMFILE.)
            err("Running guest failed")
        except GuestDied as e:
            reason = str(getattr(e, "reason", e))
            if getattr(e, "restart", False):
                raise GuestRestart(reason)
            if getattr(e, "poweroff", False):
                raise GuestPoweredOff(reason, 0)
            errx(reason)
        except WakerDied:
            errx("The Waker process died: no more input for the Guest")
        verbose("Notify on address %s\n", c_hex(addr))
        devices.handle_output(lg, addr)
        # We are out of the Guest anyway: serve whatever input is already
        # waiting (a reply the host made to the frame we just sent, a
        # finished disk request) rather than go back in and have the Waker
        # BREAK us out for it.  Not in the C, where a BREAK cost a syscall;
        # here it costs three process wake-ups.  (The Waker sends none while
        # we are out of read(): LguestDev.wake_on_input.  One it sent just
        # before costs an EAGAIN with nothing to do, below.)
        devices.handle_input(lg)


# --- The command line ---------------------------------------------------------

USAGE = ("Usage: lguest [--verbose] "
         "[--tunnet=(<ipaddr>|bridge:<bridgename>)\n"
         "|--block=<filename>|--initrd=<filename>]...\n"
         "<mem-in-mb> vmlinux [args...]\n"
         "pylguest's own: [--trace=<filename> [--trace-events=<n>]] [--stats]")

#: Largest Guest we agree to: RAM plus device pages must stay clear of the
#: top 4 MiB of the 32-bit address space, which the Host keeps for itself
#: (lguest_data.reserve_mem), and well inside what a 32-bit Guest can map.
MAX_MEM_MB = 3072


def usage():
    """Die with the C's usage text; mirrors usage() in lguest.c."""
    errx(USAGE)


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad command line gets the C's usage text and exit 1
    instead of argparse's own message and exit 2."""

    def error(self, message):
        usage()


class _DeviceOption(argparse.Action):
    """--tunnet and --block may repeat, and devices appear on the Guest's bus
    in command-line order (the first --block is /dev/vda, the first --tunnet
    eth0), as getopt_long() gave them to the C one by one."""

    def __call__(self, parser, namespace, value, option_string=None):
        namespace.devices.append((self.dest, value))


def parse_args(argv):
    """Parse the Launcher's command line (a list of str, without argv[0]);
    returns an argparse Namespace with verbose, devices [(kind, arg)...] in
    order, initrd, mem_mb (int), kernel and args.  Dies with the usage text
    on a bad command line; mirrors the getopt_long() loop of main()."""
    p = _Parser(
        prog="launcher.py", add_help=False,
        usage="%(prog)s [--verbose] [--tunnet=(IP|bridge:NAME)] "
              "[--block=FILE] [--initrd=FILE] [--trace=FILE [--trace-events=N]] "
              "[--stats] MEM_MB KERNEL [kernel args...]",
        description="Run a paravirtualised x86-32 lguest Guest (the lguest "
                    "Launcher, in Python, on an emulated Host).",
        epilog="Exit status: 0 when the Guest powers off, 2 after three ^C "
               "within a second, 1 on any other death.")
    p.add_argument("-h", "--help", action="help",
                   help="show this help and exit")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="print what the Launcher does, as the C one did")
    p.add_argument("--tunnet", dest="tunnet", action=_DeviceOption,
                   metavar="(IP|bridge:NAME)[:MAC]",
                   help="add a virtio network device on a new TAP interface: "
                        "give the host side IP (netmask 255.255.255.0), or "
                        "attach it to an existing bridge; optionally the "
                        "Guest's MAC (as the 3.16 Launcher); may repeat")
    p.add_argument("--block", dest="block", action=_DeviceOption,
                   metavar="FILE",
                   help="add a virtio block device backed by FILE; may repeat "
                        "(the first is /dev/vda)")
    p.add_argument("--initrd", metavar="FILE",
                   help="load FILE as the initial ramdisk at the top of RAM")
    p.add_argument("--trace", metavar="FILE",
                   help="(ours, not the C Launcher's) write a trace of what the "
                        "Host, Launcher, Waker and block worker do to FILE, in "
                        "the Chrome/Perfetto JSON format (open it in "
                        "ui.perfetto.dev); written at exit, it keeps the last N "
                        "events of the Launcher and the last min(N, %d) of each "
                        "child process (see --trace-events)" % RING_RECORDS)
    p.add_argument("--trace-events", metavar="N", default=str(DEFAULT_EVENTS),
                   help="(ours) the N of --trace: default %d; each event takes "
                        "about 200 bytes of memory until the exit and 150 of file "
                        "(a Linux boot makes some 40000)" % DEFAULT_EVENTS)
    p.add_argument("--stats", action="store_true",
                   help="(ours) at exit, print on stderr a table like `perf kvm "
                        "stat report`'s: the Guest's exits by kind with count "
                        "and time, hypercalls, interrupts, and per virtqueue "
                        "its kicks, interrupts, requests and bytes")
    p.add_argument("mem_mb", metavar="MEM_MB", help="Guest RAM in megabytes")
    p.add_argument("kernel", metavar="KERNEL",
                   help="the Guest kernel: an ELF vmlinux or a bzImage")
    p.add_argument("args", nargs=argparse.REMAINDER, metavar="kernel args",
                   help="the Guest kernel's command line")
    p.set_defaults(devices=[])
    ns = p.parse_args(argv)
    if not ns.mem_mb.isdigit() or not ns.mem_mb.isascii():
        errx("Memory size '%s' is not a number of megabytes" % ns.mem_mb)
    ns.mem_mb = int(ns.mem_mb)
    if not 1 <= ns.mem_mb <= MAX_MEM_MB:
        errx("Memory size %u MB is out of range (1 to %u)"
             % (ns.mem_mb, MAX_MEM_MB))
    try:
        ns.trace_events = event_limit(ns.trace_events)
    except ValueError as e:
        errx(str(e))
    return ns


# --- Leaving cleanly -----------------------------------------------------------
#
# Whatever way we go (the Guest dies, an error, ^C x3, a signal), the same
# things happen, once, in one place (leave()): the terminal gets its modes
# back, the children we forked (the Waker and the block I/O workers, and no
# other process) are ended and reaped, what we wrote reaches stdout, and one
# "lguest: ..." line goes to stderr.  The children die by themselves too
# (PDEATHSIG, EOF on their pipes), but we don't leave it to chance.
#
# The fatal signals are blocked from the first line of the script (see the
# top) and taken by a thread of our own in sigwait(): Python runs handlers
# only in the main thread, between bytecodes, which may sit inside unicorn's
# emu_start() for as long as the Guest runs without a hypercall, or be half
# way through an import or through leave() itself.  A signal then can never
# interrupt anything; it just asks for the way out.

#: Held by whoever is leaving: the main thread or the signal thread.  The
#: other one, if it comes, waits for the process to end.
_leaving = threading.Lock()
#: What cleanup() and restart_guest() need to find: the DeviceList and
#: the LguestDev once there are.
_state = {}
#: A fatal signal that came while the main thread was already leaving (for
#: the restart, which must then not exec).
_late_signal = []


def cleanup():
    """Restore the terminal, end our children, flush stdout.  Safe to call
    more than once, from either thread, at any point of the set-up."""
    # Imported here if need be (a signal early in the set-up): it must be
    # there to stop a raw_term() the main thread may be about to make.
    from devices import console
    console.restore_term(for_good=True)
    # Not imported yet: nothing forked yet.  (A child being forked this very
    # moment goes with us all the same: PDEATHSIG.)
    procs = sys.modules.get("waker.procs")
    if procs is not None:
        procs.end_children()
    # The children are gone: their trace rings are complete (--trace, --stats).
    try:
        lgtrace.finish(_state.get("devices"))
    except Exception:
        pass
    net = sys.modules.get("devices.net")
    if VERBOSE and net is not None and "devices" in _state:
        try:
            net.report(_state["devices"])
        except Exception:
            pass
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        pass


def leave(msg, status):
    """The one way out, from any thread: clean up, print "lguest: msg" (if
    any) on stderr after the terminal is restored (so raw mode can't mangle
    it; errx()'s output), and _exit(status).  Never returns."""
    if not _leaving.acquire(blocking=False):
        while True:                     # the other thread is on its way out
            time.sleep(1)
    try:
        cleanup()
    except BaseException:               # still leave, still say why
        pass
    if msg:
        try:
            os.write(2, ("lguest: %s\n" % msg).encode(errors="replace"))
        except OSError:
            pass
    os._exit(status)


def _signal_message(sig):
    if sig == signal.SIGINT:
        return "Interrupted", 2
    return "Killed by %s" % signal.Signals(sig).name, 1


def _signal_thread():
    """Wait for a fatal signal and leave with it.  (With the console in raw
    mode a typed ^C reaches the Guest, not us: ISIG is off.)"""
    while True:
        try:
            sig = signal.sigwait(_SIGNALS)
        except InterruptedError:
            continue
        _late_signal.append(sig)
        leave(*_signal_message(sig))


def start_signal_thread():
    """Start _signal_thread(), which takes the signals the top of the script
    blocked (in every thread: threads and children inherit the mask, and
    fork_child() unblocks them in the children)."""
    if not _SIGNALS:
        return
    try:
        threading.Thread(target=_signal_thread, name="lguest-signals",
                         daemon=True).start()
    except RuntimeError as e:
        errx("Cannot start the signal thread: %s" % e)


# --- main ----------------------------------------------------------------------

def _imports(ns):
    """Import everything now, before we open a single file: under a tight
    "ulimit -n" an import in the middle of the way out could fail, and a
    missing module is better found before any set-up than half way."""
    import devices.block                                    # noqa: F401
    import devices.console                                  # noqa: F401
    import devices.net                                      # noqa: F401
    import elftools.elf.elffile                             # noqa: F401
    import host                                             # noqa: F401
    import waker                                            # noqa: F401
    if any(kind == "tunnet" for kind, _ in ns.devices):
        import pytun                                        # noqa: F401


def start_tracing(ns):
    """--trace and --stats (lgtrace/): before the first fork, and before the Guest
    exists.  The trace file is opened (and emptied) now, so a path we can't write
    is one line before anything starts; the children are the Waker and a block
    worker per --block, each with a ring of its own."""
    if ns.trace is None and not ns.stats:
        return
    fd = None
    if ns.trace is not None:
        try:
            fd = os.open(ns.trace, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError:
            err("Failed to open trace file %s" % ns.trace)
    blocks = sum(1 for kind, _ in ns.devices if kind == "block")
    lgtrace.start(fd, ns.stats, ns.trace_events, children=1 + blocks, kernel=ns.kernel)


def launch(argv):
    """Everything main() in lguest.c does, in its order: memory first (before
    any fork), then the devices in command-line order, the console last, the
    kernel, the initrd, boot_params, tell_kernel(), the Waker, run_guest().
    Returns only by exception."""
    global VERBOSE
    ns = parse_args(argv)
    VERBOSE = ns.verbose
    _imports(ns)
    start_tracing(ns)
    from devices import console, net
    from devices.block import setup_block_file
    from devices.devpage import DeviceList
    from devices.memory import GuestMemory
    from waker import setup_waker

    # Guest memory: one shared mapping, made before any fork, so the block
    # worker and the Waker share the very same pages.  The device page is
    # the first page above RAM.
    try:
        mem = GuestMemory(ns.mem_mb << 20)
    except (OSError, MemoryError):
        err("Mapping %u MB of Guest memory" % ns.mem_mb)
    devices = DeviceList(mem, verbose=ns.verbose)
    _state["devices"] = devices

    for kind, arg in ns.devices:
        if kind == "tunnet":
            net.setup_tun_net(devices, arg)
        else:
            setup_block_file(devices, arg, verbose=ns.verbose)

    verbose("Guest base is at %s\n", c_ptr(mem.base))

    # We always have a console device, and it comes last.
    console.setup_console(devices)
    # The page is complete: from here on the Guest owns its status bytes.
    devices.seal()

    # Now the kernel, then the initrd at the top of RAM.
    kfd = open_or_die(ns.kernel)
    try:
        start, kernel_end = load_kernel(mem, kfd)
    finally:
        os.close(kfd)
    initrd_size = 0
    if ns.initrd is not None:
        initrd_size = load_initrd(mem, ns.initrd, kernel_end)
    setup_boot_params(mem, ns.args, initrd_size)

    probe_host(mem, start)
    lg = tell_kernel(mem, start)
    _state["lg"] = lg
    # Only now, with everything that can fail behind us, the raw terminal.
    console.raw_term()

    # The Waker watches the input file descriptors and BREAKs us out of the
    # Guest when one is readable; without it we'd only look at input when
    # the Guest happened to NOTIFY.
    setup_waker(lg, devices)
    run_guest(lg, devices)


def main(argv=None):
    """The Launcher's top level: run launch() and turn every way it can end
    into (message, status): the message for the one "lguest: " line (None
    for none), the status of the module docstring.  The caller leaves()."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        start_signal_thread()
        launch(argv)
    except GuestPoweredOff as e:
        return str(e), e.status
    except GuestRestart:
        restart_guest(argv)
    except LauncherError as e:
        return str(e), e.status
    except SystemExit as e:
        # --help exits 0; console ^C x3 exits 2 (silently, as the C).
        if isinstance(e.code, str):
            return e.code, 1
        return None, e.code if isinstance(e.code, int) else 1
    except MemoryError:
        return "Out of memory", 1
    except BrokenPipeError:
        # stdout went away (say, "| head"): print() in a device said so.
        return "Writing to stdout: Broken pipe", 1
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] in REQUIREMENTS + ("pytun",):
            return _missing_module(e.name), 1
        return _internal_error(e), 1
    except BaseException as e:                 # a bug of ours: still one line
        return _internal_error(e), 1
    return None, 1


def _internal_error(e):
    if os.environ.get("PYLGUEST_TRACEBACK"):
        import traceback
        traceback.print_exception(e)
    return "internal error: %s: %s" % (type(e).__name__, e)


#: select()'s limit: the fds restart_guest() closes, as the C did.
FD_SETSIZE = 1024


def restart_guest(argv):
    """The Guest rebooted: clean up and exec the Launcher afresh with the
    same arguments, so a new Guest boots with new devices over the same
    files.  Mirrors restart_guest() of the 3.16 lguest.c: close every fd
    above stderr (ours are close-on-exec anyway, but a library's need not
    be: a leaked tap fd would keep the old interface and its address), end
    the device processes, restore the terminal, execv().  The signal mask
    goes back to the one we were started with; the dispositions we never
    changed (an inherited SIG_IGN stays ignored, across exec as ever).  A
    fatal signal that came meanwhile wins over the restart."""
    if not _leaving.acquire(blocking=False):
        while True:                     # the signal thread is leaving
            time.sleep(1)
    cleanup()
    # The Host's helper thread goes first: its fds are about to close.
    if "lg" in _state:
        _state["lg"].close()
    if _late_signal:
        _leaving.release()
        leave(*_signal_message(_late_signal[0]))
    signal.pthread_sigmask(signal.SIG_SETMASK, _ORIG_MASK or set())
    os.closerange(3, FD_SETSIZE)
    prog = os.path.abspath(__file__)
    try:
        os.execv(sys.executable, [sys.executable, prog] + list(argv))
    except OSError as e:
        _leaving.release()
        leave("Could not exec %s: %s" % (prog, e.strerror), 1)

if __name__ == "__main__":
    leave(*main())
