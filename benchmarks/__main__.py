"""`python -m benchmarks [NAME...] [--json] [--runs K] [--quick]`.

Starts what it needs (mosquitto on free loopback ports, the emulator in this process, the agent
as real `jobs-agent run` processes), runs each benchmark K times, prints one table (median and
spread of the runs, each figure beside its floor or peer from the same runs, as a ratio) and the
machine, and appends the same to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib
import json
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from benchmarks import goals
from benchmarks.harness import Figure, MachineLoad, Measure, Session, machine

BENCHMARKS = [
    "latency",
    "drain",
    "depth",
    "idle",
    "progress-storm",
    "startup",
    "fleet",
    "emulator-cost",
    "stream-download",
]
GROUPS = {"efficiency": ["drain", "depth", "latency", "startup"]}
"""`efficiency`: every figure of issue 18's goals (and its goals table)."""
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def module(name: str) -> ModuleType:
    return importlib.import_module(f"benchmarks.{name.replace('-', '_')}")


def parse(argv: list[str]) -> argparse.Namespace:
    lines = "\n".join(f"  {n:<15} {module(n).HELP}" for n in BENCHMARKS)
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmarks of jobs-agent, each figure beside a floor or a peer measured in "
        "the same run. Results are printed and appended to benchmarks/RESULTS.md.",
        epilog=f"benchmarks:\n{lines}\n  {'efficiency':<15} drain depth latency startup: issue 18's"
        " goals, with their table\n\n`python -m benchmarks chaos --help`: the fault-injection"
        " run (not part of the default set).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help="benchmarks to run (all)")
    parser.add_argument(
        "--runs",
        type=int,
        help="runs per benchmark (default 3; drain, depth and idle 2; --quick 1)",
    )
    parser.add_argument("--quick", action="store_true", help="smaller counts, one run each")
    parser.add_argument(
        "--baseline",
        metavar="REF",
        help="also measure the agent of this git ref (drain, depth, latency, startup), its"
        " emulator (emulator-cost) or its `sim fleet` (fleet), in the same run, round by round:"
        " the 'before' column",
    )
    parser.add_argument(
        "--smoke", action="store_true", help=argparse.SUPPRESS
    )  # tiny counts for tests/test_benchmarks_smoke.py: proves a benchmark runs, nothing more
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument(
        "--no-results", action="store_true", help="do not write benchmarks/RESULTS.md"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary directory (logs, configs)"
    )
    args = parser.parse_args(argv)
    args.names = [n for name in args.names for n in GROUPS.get(name, [name])]
    for name in args.names:
        if name not in BENCHMARKS:
            parser.error(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}")
    if args.runs is not None and args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 0.1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def table(figures: list[Figure]) -> str:
    """One row per figure; with a baseline, two more columns: its median and now / before."""
    baseline = next((f.base_label for f in figures if f.base_values), "")
    head = (
        "| benchmark | figure | median (min-max) | unit | floor / peer | its median | ratio"
        " | goal | met |"
    )
    if baseline:
        head += f" before: {baseline} | now / before |"
    rows = [head, "|" + "---|" * (11 if baseline else 9)]
    for f in figures:
        spread = f"{_fmt(f.median)} ({_fmt(min(f.values))}-{_fmt(max(f.values))})"
        ratio = f"{f.ratio:.2f}x" if f.ratio is not None else "-"
        met = {None: "", True: "yes", False: "**no**"}[f.met]
        row = (
            f"| {f.benchmark} | {f.label} | {spread} | {f.unit} | {f.ref_label or '-'}"
            f" | {_fmt(f.ref_median)} | {ratio} | {f.goal or '-'} | {met} |"
        )
        if baseline:
            base = f.base_median
            change = f"{f.median / base:.2f}x" if base else "-"
            row += f" {_fmt(base)} | {change} |"
        rows.append(row)
    return "\n".join(rows)


def machine_text(info: dict[str, Any]) -> str:
    return (
        f"{info['cpu']}, {info['cores']} cores, {info['memory_mb']} MB RAM, {info['os']}; "
        f"Python {info['python']}, jobs-agent {info['jobs-agent']}, paho-mqtt "
        f"{info['paho-mqtt']}, awscrt {info['awscrt']}, awsiotsdk {info['awsiotsdk']}, "
        f"mosquitto {info['mosquitto']}"
    )


def write_results(text: str) -> None:
    """Append this run's section; the file keeps its header and every earlier run."""
    header = (
        "# Benchmark results\n\n"
        "Written by `python -m benchmarks` (newest last). Each figure is the median of the runs"
        " with their min-max, beside its floor (the same broker with a raw paho client) or peer"
        " (a minimal agent on awsiotsdk's IotJobsClientV2) measured in the same runs; ratio ="
        " figure / reference. See benchmarks/*.py for what each one measures.\n"
    )
    existing = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else header
    RESULTS.write_text(existing.rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n", encoding="utf-8")


def runs_text(counts: dict[str, int]) -> str:
    """How many runs each benchmark made ("3 run(s)", or "drain 2, latency 3 run(s)" where the
    long ones' `MAX_RUNS` capped the default): the count run, not the count asked for."""
    if len(set(counts.values())) <= 1:
        return f"{next(iter(counts.values()), 0)} run(s)"
    return ", ".join(f"{name} {count}" for name, count in counts.items()) + " run(s)"


async def run_all(
    args: argparse.Namespace,
) -> tuple[list[Figure], dict[str, float], dict[str, int]]:
    names = args.names or BENCHMARKS
    runs = args.runs or (1 if args.quick or args.smoke else 3)
    session = Session(baseline=args.baseline, smoke=args.smoke)
    figures: dict[tuple[str, str], Figure] = {}
    durations: dict[str, float] = {}
    counts: dict[str, int] = {}
    try:
        for name in names:
            bench = module(name)
            started = time.monotonic()
            # The long ones cap the default number of runs; --runs K is obeyed as given.
            count = runs if args.runs else min(runs, getattr(bench, "MAX_RUNS", runs))
            counts[name] = count
            for index in range(count):
                print(f"== {name}: run {index + 1}/{count}", file=sys.stderr, flush=True)
                measures: list[Measure] = await bench.run(session, args.quick or args.smoke)
                for m in measures:
                    figure = figures.setdefault(
                        (name, m.key),
                        Figure(name, m.key, m.label, m.unit, ref_label=m.ref_label, goal=m.goal),
                    )
                    figure.values.append(m.value)
                    if m.ref_value is not None:
                        figure.ref_values.append(m.ref_value)
                    if m.base_value is not None:
                        figure.base_values.append(m.base_value)
                        figure.base_label = m.base_label
                    figure.check = m.check
                    if m.note:
                        figure.notes.append(m.note)
            durations[name] = time.monotonic() - started
    finally:
        for name in names:
            getattr(module(name), "cleanup", lambda: None)()
        session.close(keep=args.keep)
        if args.keep:
            print(f"kept {session.root}", file=sys.stderr)
    return list(figures.values()), durations, counts


def main(argv: list[str]) -> int:
    if argv[:1] == ["chaos"]:  # fault-injection runs have their own options (benchmarks/chaos.py)
        from benchmarks.chaos import main as chaos_main

        return chaos_main(argv[1:])
    args = parse(argv)
    from jobs_agent.log import configure_logging

    # The emulator in this process logs; keep stdout for the table or the JSON.
    configure_logging("warning", "json")
    info = machine()
    when = datetime.datetime.now().astimezone()
    started = time.monotonic()
    load = MachineLoad()
    figures, durations, counts = asyncio.run(run_all(args))
    total = time.monotonic() - started
    if args.json:
        print(
            json.dumps(
                {
                    "date": when.isoformat(timespec="seconds"),
                    "machine": info,
                    "runs": counts,
                    "quick": args.quick,
                    "seconds": durations,
                    "figures": [f.as_json() for f in figures],
                    "goals": goals.as_json(figures),
                },
                indent=2,
            )
        )
    notes = sorted({f"{f.benchmark}: {n}" for f in figures for n in f.notes})
    goals_table = goals.table(figures)
    options = "".join(
        [
            " --quick" if args.quick else "",
            " --smoke" if args.smoke else "",
            f" --baseline {args.baseline}" if args.baseline else "",
        ]
    )
    section = "\n".join(
        [
            f"## {when:%Y-%m-%d %H:%M %Z}: {' '.join(args.names) or 'all'}{options},"
            f" {runs_text(counts)}, {total:.0f} s",
            "",
            f"Machine: {machine_text(info)}; {load.describe()}",
            "",
            table(figures),
            "",
            *(f"- {n}" for n in notes),
            *(["", goals_table] if goals_table else []),
        ]
    )
    if not args.json:
        print(section)
    if not args.no_results:
        write_results(section)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
