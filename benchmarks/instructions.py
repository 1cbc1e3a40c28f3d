"""Instructions per job (callgrind) of the local-bus drain: a CPU figure that does not move with
the machine's speed.

This machine's speed moves by up to 1.5x within half an hour, so a drain's CPU milliseconds, and
a now / before ratio of them, carry about +-15 % of noise. The number of instructions a process
executes for the same jobs does not depend on how fast the CPU runs them; every helper of round
14 measured its gains that way (300-job minus 100-job local drains). Here the drain counts them
itself, on the local bus (nothing outside the process paces it), for this checkout, the
`--baseline` agent and the perfect agent, in the same round as the CPU figures.

How: benchmarks/local_drain.py runs under callgrind with `--trace-children=no` (a script's
processes are not the agent's). It reads `os.times()` exactly when its window opens and when
it closes, and nothing else in the process calls it, so `--dump-before=os_times` cuts the count
there: the second part holds the window's jobs and nothing else (start-up, imports and the
warm-up jobs are in the first), the same window as the CPU figures. The emulator's and the
benchmark watcher's deliveries run through `operator.call` (local_drain's `MeteredTransport`),
so their instructions are that function's inclusive cost; the agent's are the rest, its share of
the event loop's dispatching included, as local_drain tells their CPU apart.

What is counted: user-space instructions only. The kernel's share of a job (the two fsyncs,
every system call, a script's fork and exec) is not in the count but is in the CPU figures: the
two answer different questions, and a change that moves work into or out of the kernel shows in
one only.

This checkout's local_drain.py drives every tree's agent (its directory goes first on
`sys.path`), so every tree is cut and split the same way. Durable commits stay on the event
loop (`INLINE_COMMIT_SECONDS` raised): under callgrind a commit runs ~50x slower and would often
take over the 0.05 s that sends an agent's commits to its store's worker thread, a path it does
not take natively.

Cost: a process under callgrind runs ~50x slower, and its start-up alone (~960 M instructions,
nearly all imports) takes ~20 s of CPU. So the three agents' callgrind drains run side by side
(the count hardly depends on the pace: a plugin window counted three times at once and twice
alone spread 0.2 %), and in the drain's first round only.
"""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import dataclass
from pathlib import Path

from benchmarks.harness import REPO, Tree

VALGRIND = "valgrind"
WINDOW_MARK = "os_times"
"""The C function behind `os.times()`: local_drain calls it at the window's two ends only."""
OTHERS_MARK = "_operator_call"
"""The C function behind `operator.call()`: the emulator's and the watcher's deliveries."""
PROGRAM = """\
import sys
sys.path.insert(0, {repo!r})
try:
    from jobs_agent.engine import async_store
except ImportError:  # a tree older than durable commits on the loop
    pass
else:
    async_store.INLINE_COMMIT_SECONDS = float("inf")
from benchmarks.local_drain import main
sys.exit(main(sys.argv[1:]))
"""
"""local_drain.py, from this checkout, with durable commits kept on the loop."""
JOBS = {"plugin": 60, "script": 60}
"""Jobs in the window (after `WARMUP`). A plugin job's count is the same to 0.3 % from run to
run, loaded or not. A script job's moves with the order in which the kernel reports the end of
the script's pipes and process, so with the machine's load: drains of the same code side by side
read 0.1 % apart (2 % for three at once at load 12; 4 % over 20 jobs), but a quiet and a loaded
machine read 4,213 and 4,482 k. Compare script counts within one run. Under callgrind a local
plugin job takes ~0.1 s of CPU, a script job ~0.3 s, a process's start-up ~20 s."""
WARMUP = 5


@dataclass(frozen=True)
class Counted:
    """Instructions per job in the window, in thousands."""

    agent: float
    emulator: float
    """The emulator's and the benchmark watcher's deliveries (the bus's routing included)."""


def command(tree: Tree, arguments: list[str], out: Path) -> list[str]:
    """callgrind over local_drain.py with `arguments`, its counts written to `out`, `out`.1
    (up to the window) and `out`.2 (the window)."""
    return [
        VALGRIND,
        "--tool=callgrind",
        "--trace-children=no",
        f"--dump-before={WINDOW_MARK}",
        "--compress-strings=no",
        "--compress-pos=no",
        f"--callgrind-out-file={out}",
        *tree.python(),
        "-c",
        PROGRAM.format(repo=str(REPO)),
        *arguments,
    ]


def split(text: str) -> tuple[int, int]:
    """All instructions of a callgrind dump, and those inside calls of `OTHERS_MARK` (the cost
    line after each `calls=` line is the call's inclusive cost)."""
    total = others = 0
    caller = callee = ""
    inclusive = False
    for line in text.splitlines():
        if inclusive:
            inclusive = False
            if callee == OTHERS_MARK and caller != OTHERS_MARK:
                others += int(line.split()[-1])
        elif line.startswith("fn="):
            caller = line[3:]
        elif line.startswith("cfn="):
            callee = line[4:]
        elif line.startswith("calls="):
            inclusive = True
        elif line.startswith("totals:"):
            total = int(line.split()[1])
    return total, others


async def count(tree: Tree, arguments: list[str], directory: Path, jobs: int) -> Counted | None:
    """One local drain of `jobs` jobs under callgrind; None if callgrind could not cut the
    window (an interpreter without symbols)."""
    out = directory / "callgrind.out"
    log_path = directory / "callgrind.log"
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            *command(tree, arguments, out),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=log,
            env=tree.env(),
            cwd=str(REPO),
        )
        try:
            await asyncio.wait_for(process.wait(), 900)
        finally:  # timed out, or a side-by-side drain failed: leave no valgrind behind
            if process.returncode is None:
                process.kill()
                await process.wait()
    if process.returncode != 0:
        raise RuntimeError(f"callgrind drain failed:\n{log_path.read_text()[-3000:]}")
    window = out.with_name(f"{out.name}.2")
    if not window.exists():
        return None
    if out.with_name(f"{out.name}.3").exists():
        raise RuntimeError(f"{WINDOW_MARK} was called beside the window's two ends: no count")
    total, others = split(window.read_text())
    return Counted((total - others) / jobs / 1000, others / jobs / 1000)


def note(kind: str) -> str:
    return (
        f"instructions: {JOBS[kind]} {kind} jobs after {WARMUP} warm-up jobs on the local bus"
        " under callgrind, in the first round only; user space of the drain's process only (not"
        " the kernel's, not a script's), durable commits kept on the loop; the emulator's"
        " include the benchmark watcher's"
    )


def uncut(names: list[str]) -> str:
    """Why the rows of `names` are absent though callgrind ran ("" when none is): `count` found
    no window, as with an interpreter without symbols, where callgrind never sees `WINDOW_MARK`
    called."""
    if not names:
        return ""
    return (
        f"instructions per job (callgrind) not counted for {', '.join(names)}: callgrind never"
        f" saw {WINDOW_MARK} called (an interpreter without symbols?), so the window could not"
        " be cut"
    )


def skipped(smoke: bool) -> str:
    """Why the drain counts no instructions ("" when it counts them)."""
    if smoke:
        return "instructions per job (callgrind) not counted with --smoke"
    if shutil.which(VALGRIND) is None:
        return "instructions per job (callgrind) not counted: valgrind is not installed"
    return ""
