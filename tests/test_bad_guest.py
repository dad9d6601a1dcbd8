"""Bad Guests (issue 8): every vring check of the Launcher, tripped on purpose.

guest/badring.c builds one broken avail ring or descriptor chain per mode on a
live queue (the console's transmit queue, or the block queue, whose chains the
I/O worker parses) and kicks it.  The Launcher must die the way the C one did:
one line "lguest: <why>" on stderr, exit status 1, no traceback, no process
left behind, and the disk image no longer than it was.
"""
import re

import pytest

from conftest import assert_no_traceback, last_words, make_image

DISK_SIZE = 64 * 1024

# mode -> the Launcher's last words (a regex over the whole stderr line)
MODES = {
    "avail-jump": r"Guest moved used index from (\d+) to (\d+)",
    "head": r"Guest says index (\d+) is available",
    "next": r"Desc next is (\d+)",
    "loop-self": r"Looped descriptor",
    "loop-cycle": r"Looped descriptor",
    "addr-limit": r"Invalid address (0x[0-9a-f]+)",
    "addr-wrap": r"Invalid address (0x[0-9a-f]+)",
    "out-after-in": r"Descriptor has out after in",
    "tx-input": r"Input buffers in output queue\?",
    "notify": r"Bad NOTIFY (0x[0-9a-f]+)",
    "blk-hdr": r"Bad iovec size 12 for struct virtio_blk_outhdr",
    "blk-cmd": r"Bad virtblk cmd 0 out=1 in=0",
    "blk-loop": r"Looped descriptor",
    "blk-past-end": r"Write past end (\d+)\+(\d+)",
}


def run_bad(run_launcher, tmp_path, mode):
    image = make_image(tmp_path / "disk.img", DISK_SIZE, seed=8)
    before = image.read_bytes()
    proc = run_launcher([f"--block={image}", 64, "guest/guest.elf", f"lgbad={mode}"],
                        timeout=30)
    assert_no_traceback(proc)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    # The Guest said what it was about to do, and was stopped doing it.
    m = re.search(r"^lgbad %s: (.*)$" % re.escape(mode), proc.stdout, re.M)
    assert m, out
    assert "let us live" not in proc.stdout, out
    death = re.fullmatch(r"lguest: " + MODES[mode], last_words(proc, 1))
    assert death, out
    assert image.stat().st_size == DISK_SIZE
    return proc, m.group(1), death, before, image


@pytest.mark.parametrize("mode", sorted(MODES))
def test_bad_ring_kills_launcher(run_launcher, tmp_path, mode):
    run_bad(run_launcher, tmp_path, mode)


def test_avail_jump_names_the_indices(run_launcher, tmp_path):
    _, said, death, _, _ = run_bad(run_launcher, tmp_path, "avail-jump")
    m = re.search(r"avail idx moved num\+1 = (\d+) ahead", said)
    assert m, said
    old, new = map(int, death.groups())
    assert (new - old) % 65536 == int(m.group(1)) == 129


def test_head_and_next_name_the_bad_index(run_launcher, tmp_path):
    _, said, death, _, _ = run_bad(run_launcher, tmp_path, "head")
    assert re.search(r"names descriptor %s \(num=128\)" % death.group(1), said), said
    _, said, death, _, _ = run_bad(run_launcher, tmp_path, "next")
    assert re.search(r"chains to %s \(num=128\)" % death.group(1), said), said


def test_addr_limit_is_exactly_guest_limit(run_launcher, tmp_path):
    """The Guest computes guest_limit from the device page (the end of the
    last vring); the Launcher must refuse that very address, and the same
    Guest's NOTIFY of it is a Bad NOTIFY."""
    _, said, death, _, _ = run_bad(run_launcher, tmp_path, "addr-limit")
    assert said.endswith(death.group(1)), (said, death.group(0))
    limit = int(death.group(1), 16)
    # 64 MiB of RAM, then the device page and the vrings.
    assert 64 << 20 < limit <= (64 << 20) + 256 * 4096
    _, said, death, _, _ = run_bad(run_launcher, tmp_path, "notify")
    assert int(death.group(1), 16) == limit


def test_addr_wrap_names_a_real_address(run_launcher, tmp_path):
    _, said, death, _, _ = run_bad(run_launcher, tmp_path, "addr-wrap")
    m = re.search(r"buffer at (0x[0-9a-f]+), length (0x[0-9a-f]+)", said)
    assert m, said
    addr, length = int(m.group(1), 16), int(m.group(2), 16)
    assert addr < 64 << 20                   # the start is fine...
    assert (addr + length) % (1 << 32) == 0x1000   # ...only the end wraps
    assert int(death.group(1), 16) == addr


def test_write_past_end_touches_nothing(run_launcher, tmp_path):
    _, _, death, before, image = run_bad(run_launcher, tmp_path, "blk-past-end")
    off, length = map(int, death.groups())
    assert off == DISK_SIZE - 512 and length == 1024
    after = image.read_bytes()
    assert after[:DISK_SIZE - 512] == before[:DISK_SIZE - 512]


# --- the Guest misbehaving without rings (guest/bad.c) -----------------------------

#: mode -> (exit status, the Launcher's last words): the Linux 3.16 Host's reasons.
DEATHS = {
    "hcall": (1, "lguest: Bad hypercall 99"),
    "trap": (1, r"lguest: unhandled trap 0 at 0x[0-9a-f]+ \(0x0\)"),
    "reinit": (1, "lguest: already have lguest_data"),
    "pointer": (1, "lguest: bad read address 0xf0000000 len 128"),
    "gdt-write": (1, r"lguest: CRASH: Oops: trap 14 \(page fault\) at [0-9a-f]+ error 3 "
                     r"cr2 ffc[0-9a-f]+"),
    "triple": (1, r"lguest: Bad address 0x[0-9a-f]+"),
    # A hypercall from ring 3 is the process's #GP, not the Guest's death.
    "user-hcall": (0, "lguest: CRASH: Power down"),
}


@pytest.mark.parametrize("mode", sorted(DEATHS))
def test_bad_guest_dies_with_the_hosts_reason(run_launcher, mode):
    status, words = DEATHS[mode]
    proc = run_launcher([64, "guest/guest.elf", f"lgbad={mode}"], timeout=30)
    assert re.search(r"^lgbad %s: " % re.escape(mode), proc.stdout, re.M), proc.stdout
    assert "let us live" not in proc.stdout
    assert re.fullmatch(words, last_words(proc, status)), proc.stderr


def test_user_hcall_kills_only_the_process(run_launcher):
    proc = run_launcher([64, "guest/guest.elf", "lgbad=user-hcall"], timeout=30)
    assert "lgbad user-hcall: the process was killed by trap 13" in proc.stdout, proc.stdout
    assert last_words(proc, 0) == "lguest: CRASH: Power down"
