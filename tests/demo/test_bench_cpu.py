"""The server CPU a load test charges to its requests (demo_shop.bench.cpu), from /proc."""

import os
import subprocess
import sys
import time

import pytest

from demo_shop.bench.cpu import Servers

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs /proc")

BURN = ("import time\nend = time.process_time() + {seconds}\n"
        "while time.process_time() < end: pass\ntime.sleep({rest})")


def test_a_tree_counts_its_exited_and_its_live_children_once():
    # The parent waits, runs one child that burns 0.4 s of CPU and exits, then one that burns
    # 0.3 s and stays alive: 0.7 s and two interpreters' start-up, however busy the cores.
    parent = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, sys, time\ntime.sleep(1)\n"
        f"subprocess.run([sys.executable, '-c', {BURN.format(seconds=0.4, rest=0)!r}])\n"
        f"subprocess.run([sys.executable, '-c', {BURN.format(seconds=0.3, rest=60)!r}])")])
    try:
        servers = Servers(trees=(parent.pid,))
        time.sleep(0.5)  # the parent's own start-up is over, its children not begun
        before = servers.reading()
        deadline = time.monotonic() + 60
        while servers.reading() - before < 0.7 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        assert 0.7 <= servers.reading() - before < 1.0
        # Without the tree only what the parent reaped counts: the first child.
        assert 0.4 <= Servers(trees=(), processes=(parent.pid,)).reading() < 0.8
    finally:
        parent.kill()
        parent.wait()
