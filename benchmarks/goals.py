"""Issue 18's goals, each beside the figure that measures it, its floor and (with `--baseline`)
the same figure before: the table `python -m benchmarks` prints after its own when the run
measured any of them (`python -m benchmarks efficiency` measures all that a benchmark can).

The goals are the issue's words; a goal no benchmark here measures is listed with the reason, so
the table is the whole list.
"""

from __future__ import annotations

from dataclasses import dataclass

from benchmarks.harness import Figure


@dataclass(frozen=True)
class Goal:
    text: str
    benchmark: str = ""
    key: str = ""
    elsewhere: str = ""
    """Why no figure here measures it (then benchmark and key are empty)."""


def _cpu_goals() -> list[Goal]:
    goals = []
    for kind, limit in (("script", "4 ms"), ("plugin", "1.5 ms")):
        for transport in ("paho", "awscrt", "local"):
            goals.append(
                Goal(
                    f"agent CPU per {kind} job <= {limit} ({transport})",
                    "drain",
                    f"{transport}-{kind}-agent-cpu",
                )
            )
    return goals


ISSUE_18 = [
    *_cpu_goals(),
    Goal("agent CPU per job flat within 20 % from 10 to 10,000 queued", "depth", "spread"),
    Goal("latency p50 <= 1.5x floor (paho)", "latency", "p50-paho"),
    Goal("latency p50 <= 1.5x floor (awscrt)", "latency", "p50-awscrt"),
    Goal("latency p99 < 10 ms (paho)", "latency", "p99-paho"),
    Goal("latency p99 < 10 ms (awscrt)", "latency", "p99-awscrt"),
    Goal("emulator CPU per job <= 1.5 ms (paho plugin drain)", "drain", "paho-plugin-emulator-cpu"),
    Goal(
        "sim fleet: 2,000 and 5,000 things, time per thing no worse than at 1,000",
        elsewhere="`python -m benchmarks fleet`: its per-thing rows, 5,000 things against 1,000"
        " alternated in each run (`BENCH_FLEET_THINGS=2000` for 2,000; its own section of"
        " RESULTS.md)",
    ),
    Goal(
        "sim fleet --processes N: 10,000 things in <= 60 s on 2 cores",
        elsewhere="`BENCH_FLEET_THINGS=10000 BENCH_FLEET_PROCESSES=N python -m benchmarks fleet`",
    ),
    Goal("resident memory after start-up <= 29 MB (paho)", "startup", "rss-paho"),
    Goal("resident memory after start-up <= 35 MB (awscrt)", "startup", "rss-awscrt"),
    Goal("start-up to the first request <= 0.15 s (paho)", "startup", "first-request-paho"),
    Goal(
        "no guarantee weakened",
        elsewhere="the test suite (tests/run.sh) and the chaos run, not a benchmark",
    ),
]


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "x":
        return f"{value:.2f}x"
    digits = 0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 2 if abs(value) >= 0.1 else 3
    return f"{value:.{digits}f} {unit}"


def table(figures: list[Figure]) -> str | None:
    """The goals table, or None when this run measured none of the goals."""
    found = {(f.benchmark, f.key): f for f in figures}
    if not any((g.benchmark, g.key) in found for g in ISSUE_18):
        return None
    baseline = next((f.base_label for f in figures if f.base_values), "")
    rows = [
        "| goal (issue 18) | now | floor | x floor | "
        + (f"before ({baseline}) | " if baseline else "")
        + "met |",
        "|" + "---|" * (6 if baseline else 5),
    ]
    for goal in ISSUE_18:
        figure = found.get((goal.benchmark, goal.key))
        before = ""
        if figure is None:
            why = goal.elsewhere or f"not run (`python -m benchmarks {goal.benchmark}`)"
            cells = [why, "", "", ""]
            before = " |" if baseline else ""
        else:
            ratio = f"{figure.ratio:.2f}x" if figure.ratio is not None else "-"
            met = {None: "", True: "met", False: "**not met**"}[figure.met]
            cells = [
                _fmt(figure.median, figure.unit),
                f"{_fmt(figure.ref_median, figure.unit)} ({figure.ref_label})"
                if figure.ref_values
                else "-",
                ratio,
                met,
            ]
            if baseline:
                before = f" {_fmt(figure.base_median, figure.unit)} |"
        rows.append(f"| {goal.text} | {cells[0]} | {cells[1]} | {cells[2]} |{before} {cells[3]} |")
    return "\n".join(rows)


def as_json(figures: list[Figure]) -> list[dict[str, object]]:
    """The goals with the figure that measures each (None where none ran or none can)."""
    found = {(f.benchmark, f.key): f for f in figures}
    result: list[dict[str, object]] = []
    for goal in ISSUE_18:
        figure = found.get((goal.benchmark, goal.key))
        result.append(
            {
                "goal": goal.text,
                "benchmark": goal.benchmark or None,
                "key": goal.key or None,
                "elsewhere": goal.elsewhere or None,
                "now": None if figure is None else figure.median,
                "floor": None if figure is None else figure.ref_median,
                "before": None if figure is None else figure.base_median,
                "met": None if figure is None else figure.met,
            }
        )
    return result
