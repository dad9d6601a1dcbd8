"""--trace and --stats (issue 17): the trace of a real run is a Chrome/Perfetto JSON
trace the standard library reads, with events from the Launcher, the Waker and the
block worker, every track in time order and every B with its E; the hypercall counts
--stats prints are the ones our Guest counted itself (lghcalls=1); a trace file we
can't write is one line before anything starts; the file keeps what --trace-events
says; a block worker SIGKILLed mid-run still has its events in the trace.
"""
import collections
import json
import os
import re
import signal
import subprocess
import time

import psutil
import pytest

from conftest import (LAUNCHER, PYTHON, ROOT, assert_no_traceback, guest_hcalls,
                      host_hcalls, launch, lgtest_lines, make_image)

LINUX = ROOT.parent / "shared" / "linux"
INITRD = ROOT / "images" / "linux-initrd.cpio.gz"
VCPU = (1 << 22) + 1          # lgtrace.record.VCPU_TID: the "Guest vCPU 0" track


def load(path):
    """The trace's events, read with nothing but the standard library."""
    with open(path) as f:
        return json.load(f)["traceEvents"]


def process_names(events):
    return {e["pid"]: e["args"]["name"] for e in events
            if e["ph"] == "M" and e["name"] == "process_name"}


def check_trace(events):
    """What every trace must be; returns {process name: events}."""
    names = process_names(events)
    last, depth = {}, collections.Counter()
    per = collections.Counter()
    for e in events:
        if e["ph"] == "M":
            continue
        track = (e["pid"], e["tid"])
        assert e["ts"] >= last.get(track, 0), ("time went backwards", e)
        last[track] = e["ts"]
        if e["ph"] == "B":
            depth[track] += 1
        elif e["ph"] == "E":
            assert depth[track] > 0, ("an E without its B", e)
            depth[track] -= 1
        per[names.get(e["pid"], e["pid"])] += 1
    assert not +depth, ("B without E", +depth)
    # Perfetto binds a flow event to the slice begun last on its track: that must be
    # the slice the arrow is for, the one begun 2 ns before it.
    begun = {}
    for e in sorted((e for e in events if e["ph"] != "M"), key=lambda e: e["ts"]):
        track = (e["pid"], e["tid"])
        if e["ph"] in "BXi":
            begun[track] = e
        elif e["ph"] in "sf":
            assert abs(begun[track]["ts"] + 0.002 - e["ts"]) < 1e-6, (e, begun[track])
    return per


def test_stats_count_the_hypercalls_our_guest_made(run_launcher):
    proc = run_launcher(["--stats", 64, ROOT / "guest" / "guest.elf",
                         "lgtest=hcall,async,irq,timer,pagefault,fpu",
                         "lghcalls=1"])
    assert_no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    assert set(lgtest_lines(proc.stdout).values()) == {"PASS"}, proc.stdout
    mine = guest_hcalls(proc.stdout)
    assert mine["NOTIFY"][0] > 0 and mine["SHUTDOWN"] == (1, 0)
    assert sum(a for _, a in mine.values()) > 0, "no async hypercall: a weak test"
    assert host_hcalls(proc.stderr) == mine
    # The exit table and the death line after it.
    assert re.search(r"^\s+LHCALL_HALT\s+\d+\s", proc.stderr, re.M)
    assert proc.stderr.rstrip().endswith("lguest: CRASH: Power down")


def test_trace_of_our_guest_lgtest_all(run_launcher, tmp_path):
    disk = make_image(tmp_path / "disk.img", 4 << 20, seed=3)
    trace = tmp_path / "all.json"
    proc = run_launcher(["--trace=%s" % trace, "--stats", "--block=%s" % disk, 64,
                         ROOT / "guest" / "guest.elf", "lgtest=all", "lgblk=0:2048",
                         "lgstress_secs=1", "lgbench_secs=1", "lghcalls=1"], timeout=240)
    assert_no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    # Whatever the verdicts (the "user" mode's timing can miss on a loaded machine),
    # every mode ran and the Guest powered off.
    assert re.search(r"^lgtest: \d+ passed, \d+ failed$", proc.stdout, re.M), proc.stdout
    with open(trace) as f:
        whole = json.load(f)
    events = whole["traceEvents"]
    per = check_trace(events)
    assert per["Launcher (launcher.py)"] and per["Waker"] and per["block I/O worker (vda)"]
    assert host_hcalls(proc.stderr) == guest_hcalls(proc.stdout)
    names = collections.Counter(e.get("name") for e in events)
    # The bench floods the Launcher's bounded buffer on a fast engine (over a million
    # events), so its start (LHCALL_LGUEST_INIT) may be gone: the tests below pin the
    # bound (test_trace_keeps_the_last_n_events) and the start (..._of_a_linux_boot).
    for name in ("LHCALL_HALT", "trap 14 #PF", "int 0x80",
                 "blk read", "kick: block vda", "LHREQ_IRQ 1", "IRQ 1 delivered",
                 "BREAK", "kick -> request", "request -> LHREQ_IRQ",
                 "interrupt -> delivery"):
        assert names[name], name
    # The queue table counts what the worker did: a request per span in its track,
    # unless the worker's ring overflowed (a much faster disk than ours).
    vda = re.search(r"^\s+1\s+block vda\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)$", proc.stderr,
                    re.M)
    spans = sum(names[n] for n in ("blk read", "blk write", "blk flush", "blk get_id"))
    worker = [c for c in whole["otherData"]["children"] if c["process"] == "block"][0]
    assert vda and int(vda.group(3)) >= spans
    if not worker["dropped"]:
        assert int(vda.group(3)) == spans and names["blk write"]


def test_trace_to_an_unwritable_path_is_one_line_before_the_guest(run_launcher,
                                                                  tmp_path):
    for path in (tmp_path / "no-such-dir" / "t.json", tmp_path):
        proc = run_launcher(["--trace=%s" % path, 64, ROOT / "guest" / "guest.elf",
                             "lgtest=hcall"])
        assert_no_traceback(proc)
        assert proc.returncode == 1
        assert proc.stdout == ""                    # the Guest never printed a thing
        lines = proc.stderr.splitlines()
        assert len(lines) == 1, proc.stderr
        assert lines[0].startswith("lguest: Failed to open trace file %s: " % path)
    proc = run_launcher(["--trace=%s" % (tmp_path / "t.json"), "--trace-events=many",
                         64, ROOT / "guest" / "guest.elf"])
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr == "lguest: Trace size 'many' is not a positive number of events\n"


def test_trace_keeps_the_last_n_events(run_launcher, tmp_path):
    trace = tmp_path / "t.json"
    proc = run_launcher(["--trace=%s" % trace, "--trace-events=300", 64,
                         ROOT / "guest" / "guest.elf", "lgtest=hcall"])
    assert proc.returncode == 0, proc.stderr
    with open(trace) as f:
        whole = json.load(f)
    assert whole["otherData"]["launcher events kept"] == 300
    assert whole["otherData"]["launcher events dropped"] != "none"
    check_trace(whole["traceEvents"])
    # The last ones: the Guest's SHUTDOWN is there, its LGUEST_INIT is not.
    names = {e.get("name") for e in whole["traceEvents"]}
    assert "LHCALL_SHUTDOWN" in names and "LHCALL_LGUEST_INIT" not in names


def test_a_sigkilled_worker_keeps_its_events(tmp_path):
    """The block worker writes into shared memory: killed in the middle of the stress
    test, what it recorded is in the trace, and a request it never finished ends
    with the trace, marked unfinished."""
    disk = make_image(tmp_path / "disk.img", 4 << 20)
    trace = tmp_path / "k.json"
    proc = subprocess.Popen([PYTHON, str(LAUNCHER), "--trace=%s" % trace,
                             "--block=%s" % disk, "64", str(ROOT / "guest" / "guest.elf"),
                             "lgtest=blk-stress", "lgblk=0:2048", "lgstress_secs=60"],
                            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        worker = None
        while worker is None and time.monotonic() < deadline:
            kids = sorted(psutil.Process(proc.pid).children(),
                          key=lambda p: (p.create_time(), p.pid))
            if len(kids) == 2:
                worker = kids[0]                    # forked first, at --block
            time.sleep(0.1)
        assert worker is not None
        time.sleep(3)                               # into the stress test
        os.kill(worker.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in err
    assert proc.returncode == 1 and err.rstrip().endswith("I/O worker died"), err
    events = load(trace)
    per = check_trace(events)
    pid = next(p for p, n in process_names(events).items() if n.startswith("block I/O"))
    requests = [e for e in events if e["pid"] == pid and e["ph"] == "B"]
    assert len(requests) > 100 and per["block I/O worker (vda)"]


@pytest.mark.skipif(not (LINUX / "vmlinux").exists(),
                    reason="no ../shared/linux/vmlinux: no Linux kernel to trace")
def test_trace_of_a_linux_boot(tmp_path):
    """What README "Watching the Host work" walks through is really in the trace."""
    r = subprocess.run(["make", "-s", "-C", str(ROOT), "images/linux-initrd.cpio.gz"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    disk = make_image(tmp_path / "disk.img", 1 << 20, seed=5)
    trace = tmp_path / "linux.json"
    proc = launch(["--trace=%s" % trace, "--block=%s" % disk, "--initrd=%s" % INITRD, 64,
                   LINUX / "vmlinux", "console=hvc0", "pyl.end=poweroff"], timeout=240)
    assert_no_traceback(proc)
    assert proc.returncode == 0, proc.stderr[-2000:]
    events = load(trace)
    per = check_trace(events)
    assert per["Launcher (launcher.py)"] and per["Waker"] and per["block I/O worker (vda)"]
    exits = [e for e in events if e["tid"] == VCPU and e["ph"] == "B"]
    hcalls = [e for e in exits if e["name"].startswith("LHCALL_")]
    # lguest_entry: LGUEST_INIT, then the first NEW_PGTABLE; before them only
    # startup_32 runs (any exit there, a BREAK for stdin, says so).
    assert hcalls[0]["name"] == "LHCALL_LGUEST_INIT"
    assert "lguest_entry" in hcalls[0]["args"]["eip"]
    assert hcalls[1]["name"] == "LHCALL_NEW_PGTABLE"
    assert "lguest_entry" in hcalls[1]["args"]["eip"]
    assert all("startup_32" in e["args"]["eip"] for e in exits[:exits.index(hcalls[0])])
    text = "".join(e["args"].get("text", "") for e in hcalls)
    assert "Linux version 3." in text
    means = [e["args"].get("means") for e in hcalls if e["name"] == "LHCALL_NOTIFY"]
    assert "status of block vda" in means and "kick block vda" in means
    assert "status of console" in means and "kick console tx" in means
    flows = collections.Counter(e["name"] for e in events if e["ph"] == "f")
    assert flows["kick -> request"] and flows["request -> LHREQ_IRQ"]
    assert flows["interrupt -> delivery"]
