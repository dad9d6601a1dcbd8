"""Issue 8, the short stress run: block stress with a 1000 Hz Guest timer and
console output flowing at once.  The long run is bench/stress.py (60 s)."""
import sys

import pytest

from conftest import ROOT

# The run itself (Launcher, RSS sampling, counting) is the bench's: one copy.
sys.path.insert(0, str(ROOT / "bench"))
import stress  # noqa: E402


@pytest.mark.slow
def test_short_stress_run(guest_elf):
    r = stress.run(secs=8, hz=1000, chatter_ms=100, warmup=3.0)
    assert r["passed"], r["stdout"][-3000:] + r["stderr"]
    assert r["errors"] == 0
    # Every request came back (the Guest fails the run otherwise) and many did.
    assert r["requests"] > 1000
    assert r["verified"] > 0
    # The tick and the console really ran alongside the disk.
    assert r["ticks"] > 8 * 100
    assert r["console_lines"] >= 8 * 10 * 0.8
    # Memory flat after warm-up: a leak of even 100 bytes per request would
    # show as several MB here.
    assert r["samples"] >= 3
    assert r["rss_end_mb"] - r["rss_warm_mb"] < 4.0, r
