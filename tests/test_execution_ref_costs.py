"""`ExecutionRef`'s own hash and comparison (issue 18): an execution's reference is hashed
about 10 times a plugin job and compared about 6 (the engine's sets and dicts, the store's
pending writes). `@model`'s shared `__hash__` and `__eq__` look the class's plan up and read
the fields through an `attrgetter`: 3.2 and 3.5 k instructions here, 2.2 and 1.8 k for the
class's own. Counted here by calls (never timed), on the real agent's path, and held to the
values and results the shared ones give."""

from __future__ import annotations

import dataclasses
import itertools
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobs_agent import datamodel
from jobs_agent.vocabulary import ExecutionRef
from tests.harness import wait_until
from tests.helpers.agent_harness import (
    make_config,
    make_handler_dir,
    plugin_on_path,
    running_agent,
)
from tests.helpers.calls import Calls

PLUGIN = """
class Quick:
    async def run(self, ctx):
        ctx.progress(40, "verified", stage="two")
"""


@pytest.fixture
def plugin_module(tmp_path: Path) -> Iterator[None]:
    with plugin_on_path(tmp_path, "ref_costs_plugin", PLUGIN):
        yield


async def test_a_plugin_job_hashes_and_compares_references_without_the_shared_methods(
    tmp_path: Path, plugin_module: None
) -> None:
    """Over three plugin jobs after a first one: no call of `@model`'s shared hash or
    comparison (about 10 hashes and 6 comparisons a job before, each through them), and the
    references' own hash is called as often as the shared one was."""
    make_handler_dir(tmp_path)
    config = dataclasses.replace(
        make_config(tmp_path), handlers={"quick": "ref_costs_plugin:Quick"}
    )
    calls = Calls((datamodel.__file__, sys.modules[ExecutionRef.__module__].__file__ or ""))
    async with running_agent(tmp_path, config) as harness:
        engine = harness.agent.engine
        assert engine is not None
        await harness.run_job("warm-up", {"operation": "quick"})
        await wait_until(lambda: len(engine.outcomes) == 1, 15, "the warm-up job reported")
        with calls.counting():
            for number in range(3):
                execution = await harness.run_job(f"quick-{number}", {"operation": "quick"})
                assert str(execution.status) == "SUCCEEDED"
                await wait_until(lambda n=2 + number: len(engine.outcomes) == n, 15, "the report")
    assert calls.of("datamodel.py", "_hash") == 0, calls.by_name.most_common()
    assert calls.of("datamodel.py", "_eq") == 0, calls.by_name.most_common()
    assert calls.of("vocabulary.py", "__hash__") >= 3 * 5, calls.by_name.most_common()


@dataclasses.dataclass(frozen=True)
class _Generated:
    """What dataclasses generates for ExecutionRef's three fields (its hash and `__eq__`)."""

    namespace: str | None
    job_id: str
    execution_number: int


VALUES = list(itertools.product([None, "", "ns", "other"], ["job-1", "job-2"], [1, 2, True, 1.0]))


def test_a_reference_hashes_and_compares_as_the_generated_methods_do() -> None:
    """Every pair of references over a few values (the default namespace spelt both ways,
    numbers equal across types): equal exactly when the generated `__eq__` says so, with the
    generated hash (as dict and set keys mixed with the shared methods' earlier values); never
    equal to a tuple or another class with the same fields."""
    refs = [ExecutionRef(*values) for values in VALUES]
    generated = [_Generated(ref.namespace, ref.job_id, ref.execution_number) for ref in refs]
    for (ref, gen), (other, other_gen) in itertools.product(
        zip(refs, generated, strict=True), repeat=2
    ):
        assert (ref == other) is (gen == other_gen)
        assert (ref != other) is (gen != other_gen)
    for ref, gen in zip(refs, generated, strict=True):
        assert hash(ref) == hash(gen) == hash((ref.namespace, ref.job_id, ref.execution_number))
        assert ref != (ref.namespace, ref.job_id, ref.execution_number)
        assert ref != gen and gen != ref
        assert ref.__eq__(gen) is NotImplemented
    assert ExecutionRef("", "job-1", 1) == ExecutionRef(None, "job-1", 1)
    assert len(set(refs)) == len({(g.namespace, g.job_id, g.execution_number) for g in generated})
