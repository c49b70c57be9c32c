"""bench/measure.py: the one place the benchmarks read resident memory."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest

from bench.harness import REPO
from bench.measure import peak_rss, run_child


def test_peak_rss_sees_memory_this_process_touches_and_keeps_its_peak_after_freeing():
    before = peak_rss()
    block = np.ones(64 * 2**20, dtype=np.uint8)  # 64 MB, every page touched
    held = peak_rss()
    assert held.now_mb - before.now_mb > 60 and held.peak_mb >= held.now_mb
    del block
    after = peak_rss(trim=True)
    # VmHWM trails VmRSS by up to 64 pages a thread (the kernel's lazy counters): 1 MB of slack
    assert after.now_mb < held.now_mb - 50 and after.peak_mb > held.now_mb - 1


def test_peak_rss_of_another_process_and_of_one_that_is_gone():
    code = "import time; print('ready', flush=True); time.sleep(30)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        assert peak_rss(proc.pid).now_mb > 1
    finally:
        proc.kill()
        proc.wait()
    with pytest.raises(ProcessLookupError):
        peak_rss(proc.pid)


def test_run_child_reads_the_peak_of_a_child_that_has_exited():
    code = "import numpy as np; b = np.ones(96 * 2**20, dtype=np.uint8); del b; print('done')"
    run = run_child([sys.executable, "-c", code])
    assert run.exit_code == 0 and run.stdout.strip() == "done" and not run.killed
    assert run.peak_rss_mb > 96


def test_run_child_kills_when_asked():
    run = run_child([sys.executable, "-c", "import time; time.sleep(60)"], kill_when=lambda: True)
    assert run.killed and run.exit_code == -9 and run.seconds < 30


#: Ways of reading RSS that must not come back outside bench/measure.py.
RSS_READS = re.compile(r"VmRSS|VmHWM|ru_maxrss|getrusage|/statm|memory_info\(")


def test_rss_is_read_only_in_measure_and_the_package_needs_no_path_hacks():
    sources = list((REPO / "bench").rglob("*.py"))
    assert len(sources) > 20
    readers = [p.name for p in sources if RSS_READS.search(p.read_text()) and p.name != "measure.py"]
    assert readers == []
    hacks = [p.name for p in sources if "sys.path" in p.read_text() or "noqa: E402" in p.read_text()]
    assert hacks == []
