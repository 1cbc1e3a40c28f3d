"""The benchmarks' process samples: a process's own CPU time to the kernel's resolution, not
/proc's 10 ms ticks (a `depth --quick` window is ~18 ticks of the agent's CPU: one tick was 5.5 %
of a figure, and up to 11 % of the ratio issue 18 holds to 20 %); its wake-ups, every thread's."""

from __future__ import annotations

import subprocess
import sys

import pytest

from benchmarks.harness import TICKS, cpu_sample, wakeups

pytestmark = pytest.mark.timeout(60)

SPIN = """
import sys, time
tick = 1 / int(sys.argv[1])
now = time.process_time()
goal = (int(now / tick) + 1.5) * tick  # half a tick past the next tick
while time.process_time() < goal:
    pass
print(time.process_time(), flush=True)
sys.stdin.readline()
"""
"""A process that burns CPU until its own clock is half a tick past a tick, says the time it
read, and waits: a sample in ticks reads it at least half a tick short."""


def test_a_sample_reads_a_process_cpu_time_finer_than_a_tick() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", SPIN, str(TICKS)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        reported = float(child.stdout.readline())
        sampled = cpu_sample(child.pid)
        child.stdin.write("\n")
        child.stdin.flush()
    finally:
        child.wait(30)
    # After its own reading the child only prints and blocks: microseconds of CPU, far less
    # than the 0.4 tick allowed here.
    assert reported <= sampled.own < reported + 0.4 / TICKS, (reported, sampled)
    assert sampled.children == 0


NAPS = """
import sys, threading, time
def naps():
    sys.stdin.readline()
    for _ in range(40):
        time.sleep(0.0001)
    print("napped", flush=True)
    sys.stdin.readline()
thread = threading.Thread(target=naps)
thread.start()
print("ready", flush=True)
thread.join()
"""
"""A process whose second thread, once told, sleeps 40 times (each sleep blocks: one voluntary
switch) and waits, alive, to be told again."""


def test_wakeups_count_the_sleeps_of_every_thread() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", NAPS], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None and child.stdin is not None
    try:
        assert child.stdout.readline() == "ready\n"
        before = wakeups(child.pid)
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.stdout.readline() == "napped\n"
        after = wakeups(child.pid)
    finally:
        child.stdin.write("\n")
        child.stdin.flush()
        child.wait(30)
    assert after - before >= 40, (before, after)
