"""The Launcher's one-line death.

The C Launcher dies through err(3)/errx(3): print "lguest: <message>" on
stderr and exit(1).  We raise LauncherError instead, so the top of
launcher.py (or a child process's main loop) can restore the terminal first,
then print the same single line and exit with the same status.  Nothing a
Guest does may end any other way: a Python traceback is a bug.
"""

import os
import sys


class LauncherError(Exception):
    """A clean, expected death: str(e) is the one-line message, e.status the
    exit status (1 unless said otherwise), as errx(status, ...) in C."""

    def __init__(self, msg, status=1):
        super().__init__(msg)
        self.status = status


def errx(msg, status=1):
    """Die with msg; mirrors errx(3).  Never returns."""
    raise LauncherError(msg, status)


def err(msg, status=1):
    """Die with msg plus ": <strerror>" of the OSError being handled; mirrors
    err(3), which appends strerror(errno).  Never returns."""
    exc = sys.exc_info()[1]
    if isinstance(exc, OSError) and exc.errno is not None:
        msg = "%s: %s" % (msg, os.strerror(exc.errno))
    raise LauncherError(msg, status)


def die_in_child(e):
    """How a forked child (the Waker, the block I/O worker) dies: the same
    "lguest: <msg>" line the Launcher prints, then _exit so no Python
    cleanup inherited from the parent (atexit handlers, buffered stdio,
    the terminal restore) runs twice; nor is the inherited stdio buffer
    flushed: fork_child() emptied it before the fork, and children write
    with os.write only."""
    try:
        os.write(2, ("lguest: %s\n" % e).encode(errors="replace"))
    except OSError:
        pass
    os._exit(getattr(e, "status", 1))


def c_hex(value):
    """printf("%#lx") as C prints it: like Python's "%#x", except that C
    gives a bare "0" for zero."""
    return "%#x" % value if value else "0"
