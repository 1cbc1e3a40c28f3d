"""Who goes first: benchmarks that run this checkout and the `--baseline` agent one after the
other on shared parts (drain: one emulator and broker per round; latency: one fresh broker per
transport) swap the two from run to run, and say in a note which order each run used.

The first agent on shared parts pays for their first use. With a fixed order:
- drain, the same code on both sides (`--baseline HEAD`): now / before read 0.85x-1.07x on agent
  rows and 1.18x on the emulator's CPU per paho script job, and "now" read worse on paho scripts
  in three runs out of three;
- latency (round 15, quiet machine): the agent run first read p99 10.2 and 12.9 ms against the
  second's 7.04 and 7.65; with the order swapped the other code, now first, read 22.7 ms and
  this checkout 8.08.
Over two runs the swap gives each side each place once. The perfect agent keeps the place it
held in every earlier run (last), so its floor stays comparable with theirs.
"""

from __future__ import annotations

from benchmarks.harness import Tree


def order(round_number: int, baseline: bool) -> list[str]:
    """Who runs, in turn, in round `round_number` (1, 2, ...): this checkout ("agent") and the
    baseline swap places each round, the perfect agent is always last."""
    if not baseline:
        return ["agent", "perfect"]
    pair = ["agent", "baseline"] if round_number % 2 == 1 else ["baseline", "agent"]
    return [*pair, "perfect"]


def name(who: str, base: Tree | None) -> str:
    """How a note names `who` ("agent", "baseline" or "perfect")."""
    return {
        "agent": "this checkout",
        "baseline": f"the agent of {base.label}" if base else "",
        "perfect": "the perfect agent",
    }[who]


def order_note(round_number: int, who: list[str], base: Tree | None, verb: str) -> str:
    """E.g. "round 2 drained the agent of main, then this checkout, then the perfect agent"."""
    return f"round {round_number} {verb} {', then '.join(name(w, base) for w in who)}"
