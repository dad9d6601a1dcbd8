#!/usr/bin/env python3
"""Run the Linux 3.16 C Launcher, unmodified, on pylguest's Host.

    c_launcher.py [--launcher=PATH] [--trace=FILE [--trace-events=N]] [--stats]
                  <the C Launcher's own arguments>

    .venv/bin/python c_launcher.py --block=images/disk.img --initrd=initrd.cpio.gz \\
        64 ../shared/linux/vmlinux console=hvc0

PATH defaults to ../shared/linux/lguest-launcher-3.16-dynamic: tools/lguest/lguest.c of
Linux 3.16 built for i386 against glibc.  Everything after it is the C Launcher's
command line (see its usage; `--tunnet=IP[:MAC]`, `--block=`, `--initrd=`, `--rng`...).
--trace, --trace-events and --stats are launcher.py's (lgtrace/): the Host's side of
the run -- its exits, hypercalls, traps and interrupts -- is watched the same way; the
devices are the C Launcher's, so there are no device tracks or queue counts.

Processes (see README "The C Launcher on our Host"):

  this process   the Host: host/lguest_socket.py serves /dev/lguest, the Guest runs
                 here on unicorn, as it ran inside the Launcher's read() in the kernel
  its child      the C Launcher, with shim/lguest-shim.so preloaded (LD_PRELOAD): its
                 open("/dev/lguest") reaches us through the socket it inherits
                 (LGUEST_HOST_FD); its Guest memory is a memfd we map too
  their children the Launcher's device threads (clone(CLONE_VM)), one per virtqueue

The Launcher gets a process group of its own, and the terminal's foreground if we had
it, as a shell gives a job: when one of its threads dies it kill(0, SIGTERM)s its group,
which must not reach whoever started us.  The exit status is the C Launcher's (a Guest
power-off is its "errx(1, ...)": 1), or 128+N if signal N ended it.  Signals sent to us
go on to the Launcher's group; whatever it leaves behind (device threads of a killed
Launcher) is killed; the terminal is put back.
"""

import ctypes
import os
import select
import signal
import socket
import subprocess
import sys
import termios
import threading

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_LAUNCHER = os.path.join(os.path.dirname(ROOT), "shared", "linux",
                                "lguest-launcher-3.16-dynamic")
SHIM = os.path.join(ROOT, "shim", "lguest-shim.so")
I386_LOADER = "/lib/ld-linux.so.2"
PR_SET_CHILD_SUBREAPER = 36
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


def die(msg):
    sys.stderr.write("lguest: %s\n" % msg)
    sys.exit(1)


def elf_kind(path):
    """(i386?, dynamically linked?) of an ELF program: the shim is an i386 library,
    and LD_PRELOAD reaches only programs with a PT_INTERP."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile
    try:
        with open(path, "rb") as fh:
            elf = ELFFile(fh)
            return (elf["e_machine"] == "EM_386",
                    any(seg.header.p_type == "PT_INTERP" for seg in elf.iter_segments()))
    except (OSError, ELFError):
        return False, False


def check(launcher):
    if not os.access(launcher, os.X_OK):
        die("no C Launcher at %s (give --launcher=PATH; see ../shared/linux/README.md)"
            % launcher)
    i386, dynamic = elf_kind(launcher)
    if not i386:
        die("%s is not an i386 ELF program (the C Launcher is)" % launcher)
    if not dynamic:
        die("%s is statically linked: the shim reaches only dynamically linked "
            "programs (LD_PRELOAD); see README" % launcher)
    if not os.path.exists(I386_LOADER):
        die("the i386 C Launcher needs Debian's libc6-i386 (%s is missing; make "
            "installs it)" % I386_LOADER)
    if not os.path.exists(SHIM):
        die("%s is missing: run make" % SHIM)


def kill_leftovers():
    """Kill what the Launcher left behind.  We are a child subreaper, so the device
    threads of a Launcher that died without reaping them are our children now; we
    never had any other children."""
    import psutil
    for p in psutil.Process().children(recursive=True):
        try:
            p.kill()
        except psutil.Error:
            pass
    while True:
        try:
            pid, _ = os.waitpid(-1, 0)
        except ChildProcessError:
            return
        except InterruptedError:
            continue


def foreground():
    """True if we own the terminal on stdin (its foreground process group)."""
    try:
        return os.tcgetpgrp(0) == os.getpgrp()
    except OSError:
        return False


def take_terminal(pgid):
    """tcsetpgrp() from a background group stops us with SIGTTOU unless ignored."""
    old = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    try:
        os.tcsetpgrp(0, pgid)
    except OSError:
        pass
    finally:
        signal.signal(signal.SIGTTOU, old)


def spawn(launcher, argv, their_end, tty_job):
    """Start the C Launcher with the shim and its end of the Host socket, as a job."""
    env = dict(os.environ)
    env["LD_PRELOAD"] = " ".join(filter(None, [SHIM, env.get("LD_PRELOAD")]))
    env["LGUEST_HOST_FD"] = str(their_end.fileno())

    def new_job():
        # In the child, before exec (we have no threads yet): a group of its own, in the
        # terminal's foreground if we had it, so its tcsetattr() and reads work.
        os.setpgid(0, 0)
        if tty_job:
            take_terminal(os.getpgrp())

    try:
        return subprocess.Popen([launcher] + argv, pass_fds=[their_end.fileno()],
                                env=env, preexec_fn=new_job)
    except OSError as e:
        die("can't run %s: %s" % (launcher, e.strerror))


def watch(proc, sig_r, server, status):
    """The watcher thread: passes our signals on to the Launcher's group; when the
    Launcher has exited, kills what it left and shuts the Host down."""
    pidfd = os.pidfd_open(proc.pid)
    while True:
        ready, _, _ = select.select([pidfd, sig_r], [], [])
        if sig_r in ready:
            for sig in os.read(sig_r, 64):
                try:
                    os.killpg(proc.pid, sig)
                except OSError:
                    pass
        if pidfd in ready:
            status.append(proc.wait())
            kill_leftovers()
            server.shutdown()
            return


def our_options(argv):
    """Take our own options off the front of argv: (launcher, trace, events, stats)."""
    launcher, trace, events, stats = DEFAULT_LAUNCHER, None, None, False
    while argv:
        arg = argv[0]
        if arg.startswith("--launcher="):
            launcher = os.path.abspath(arg[len("--launcher="):])
        elif arg.startswith("--trace="):
            trace = arg[len("--trace="):]
        elif arg.startswith("--trace-events="):
            events = arg[len("--trace-events="):]
        elif arg == "--stats":
            stats = True
        else:
            break
        argv.pop(0)
    return launcher, trace, events, stats


def start_tracing(trace, events, stats, argv):
    """--trace/--stats as launcher.py's start_tracing(), before the Guest exists; the
    kernel (the C's second positional argument) names the eips."""
    import lgtrace
    from lgtrace.record import DEFAULT_EVENTS, event_limit
    try:
        limit = event_limit(events) if events is not None else DEFAULT_EVENTS
    except ValueError as e:
        die(str(e))
    fd = None
    if trace is not None:
        try:
            fd = os.open(trace, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            die("Failed to open trace file %s: %s" % (trace, e.strerror))
    positional = [a for a in argv if not a.startswith("-")]     # -v, --block=...
    kernel = positional[1] if len(positional) > 1 else None
    lgtrace.start(fd, stats, limit, children=0, kernel=kernel)


def main(argv):
    launcher, trace, events, stats = our_options(argv)
    check(launcher)
    sys.path.insert(0, ROOT)
    from host.lguest_socket import LguestServer
    if trace is not None or stats:
        start_tracing(trace, events, stats, argv)

    ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    try:
        saved_term = termios.tcgetattr(0)
    except termios.error:
        saved_term = None
    tty_job = foreground()

    # Signals for us are for the Launcher: a no-op handler keeps us alive, the wakeup
    # fd tells the watcher thread at once (the main thread may be deep in the Guest).
    sig_r, sig_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    for sig in FORWARDED:
        signal.signal(sig, lambda *_: None)
    signal.set_wakeup_fd(sig_w, warn_on_full_buffer=False)

    host_sock, their_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    proc = spawn(launcher, argv, their_end, tty_job)
    their_end.close()
    server = LguestServer(host_sock)
    status = []
    threading.Thread(target=watch, args=(proc, sig_r, server, status),
                     name="lguest-watch", daemon=True).start()
    server.serve()

    if tty_job:
        take_terminal(os.getpgrp())
    if saved_term is not None:
        try:
            termios.tcsetattr(0, termios.TCSANOW, saved_term)
        except termios.error:
            pass
    if trace is not None or stats:
        import lgtrace
        lgtrace.finish()            # the Launcher and its threads are gone, the terminal is back
    rc = status[0] if status else 1
    return 128 - rc if rc < 0 else rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
