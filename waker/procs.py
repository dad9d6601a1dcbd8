"""The Launcher's child processes: forking them safely, and knowing when
they are gone.

The C Launcher had two helpers, the Waker (fork) and the block I/O thread
(clone with CLONE_VM).  We have no threads to share memory with, so both are
processes; Guest memory is a MAP_SHARED mapping made before any fork, which
gives the block worker the same view of it the C thread had.

Rules every child follows (fork_child does them, so no child forgets one):
- die with the Launcher: prctl(PR_SET_PDEATHSIG, SIGKILL), and if the
  Launcher already died before that took effect, go at once;
- hold no file descriptor it doesn't need, so that pipes see EOF when the
  Launcher's end closes, and a TAP device or disk isn't kept open by an
  orphan;
- default signal handling (a ^C or a dead pipe kills it quietly, never with
  a Python KeyboardInterrupt traceback), none blocked, and what the
  Launcher inherited ignored still ignored;
- never return into the Launcher's code and never run its exit handlers or
  flush its stdio buffers: leave with os._exit().
"""

import ctypes
import os
import signal
import sys
import time

import lgtrace
from devices.errors import LauncherError, die_in_child

PR_SET_PDEATHSIG = 1

#: pid -> name of each child the Launcher forked and has not yet reaped
CHILDREN = {}

_libc = None


def set_pdeathsig(sig=signal.SIGKILL):
    """prctl(PR_SET_PDEATHSIG, sig): the kernel sends sig to us when our
    parent (the thread that forked us) dies.  Raises OSError on failure."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(sig), ctypes.c_ulong(0),
                   ctypes.c_ulong(0), ctypes.c_ulong(0)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


#: Signals a child gets back in their default state, unless we inherited them
#: ignored (nohup): SIGPIPE is in the list because Python ignores it itself.
CHILD_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                 signal.SIGCHLD)


def restore_signals():
    """In a new child: default handling for CHILD_SIGNALS (an inherited
    SIG_IGN stays) and SIGPIPE, and none of them blocked (the Launcher holds
    its fatal signals for its signal thread; the mask is inherited)."""
    for sig in CHILD_SIGNALS:
        if signal.getsignal(sig) != signal.SIG_IGN:
            signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, CHILD_SIGNALS + (signal.SIGPIPE,))


def close_fds_except(keep):
    """Close every open fd of this process not in keep (a set of ints)."""
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        fds = list(range(3, 1024))
    for fd in fds:
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass        # the listdir's own fd, already gone


def fork_child(name, body, keep_fds):
    """Fork a helper process that runs body() and then exits 0.

    keep_fds: the fds the child may keep (0, 1 and 2 are always kept, for
    messages).  A LauncherError from body is the child's one-line death
    ("lguest: <msg>", exit status); any other exception is reported in one
    line too.  Returns the child's pid in the Launcher; never returns in
    the child."""
    parent = os.getpid()
    # Whatever the Launcher has buffered must not be printed twice.
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    pid = os.fork()
    if pid:
        CHILDREN[pid] = name
        if lgtrace.on: lgtrace.child_forked(pid)
        return pid

    status = 0
    try:
        set_pdeathsig()
        # If the Launcher died before prctl() the signal will never come.
        if os.getppid() != parent:
            os._exit(0)
        restore_signals()
        # A process group of our own: a signal for the Launcher's whole
        # group (^C on a cooked terminal, timeout(1), a hangup) is the
        # Launcher's to handle; if we died of it first, the Launcher would
        # report "Waker died" instead of what really happened.  We still
        # go with the Launcher (EOF on our pipe, PDEATHSIG), and a signal
        # sent to our pid still ends us.
        try:
            os.setpgid(0, 0)
        except OSError:
            pass
        close_fds_except(set(keep_fds) | {0, 1, 2})
        if lgtrace.on: lgtrace.child_started(name)     # its own ring of events
        body()
    except LauncherError as e:
        die_in_child(e)
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else 1
    except BaseException as e:          # a bug of ours: still one line
        die_in_child(LauncherError("%s process: %s: %s"
                                   % (name, type(e).__name__, e)))
    os._exit(status)


def reap_children():
    """Collect children that have exited, without waiting.  Returns a list
    of (name, pid, exit_status) (exit_status is -signal for a kill)."""
    gone = []
    for pid in list(CHILDREN):
        try:
            got, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            got, status = pid, 0
        if got == 0:
            continue
        name = CHILDREN.pop(pid)
        if os.WIFSIGNALED(status):
            code = -os.WTERMSIG(status)
        else:
            code = os.WEXITSTATUS(status)
        gone.append((name, pid, code))
    return gone


def children_alive():
    """{name: pid} of the children still running (after reaping the rest)."""
    reap_children()
    return {name: pid for pid, name in CHILDREN.items()}


def end_children(grace=0.5):
    """End the children we forked, and no other process: SIGTERM each (by
    pid, from CHILDREN), SIGKILL any still there after grace seconds, reap
    them all.  For the Launcher's way out, where they must not outlive it; a
    process we merely inherited (a shell's job, before it exec'd us) is not
    ours to end."""
    reap_children()
    for pid in list(CHILDREN):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while CHILDREN and time.monotonic() < deadline:
        reap_children()
        if CHILDREN:
            time.sleep(0.005)
    stop_children(timeout=0)


def stop_children(timeout=1.0):
    """End every child we forked: they should already be leaving (their
    pipes from the Launcher are closed, or will be at exit); kill any that
    isn't gone within timeout seconds, and reap them all.  For the
    Launcher's exit paths; killing only our own pids, by pid."""
    deadline = time.monotonic() + timeout
    while CHILDREN and time.monotonic() < deadline:
        reap_children()
        if CHILDREN:
            time.sleep(0.01)
    for pid in list(CHILDREN):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for pid in list(CHILDREN):
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
        CHILDREN.pop(pid, None)
