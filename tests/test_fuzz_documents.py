"""Fuzzing job documents: whatever the cloud sends, the agent answers with a handler or with
REJECTED and a reason, and keeps serving.

The fast properties call `Dispatcher.resolve` / `plan` (no process is started) on random JSON
and on structure-aware mutations of valid documents; a smaller sample of the rejected ones then
goes through the real engine on the embedded emulator, where the service must record REJECTED
with that reason, exactly once, and a good job queued afterwards must still succeed.
Budgets come from tests/hypothesis_profiles.py (`--hypothesis-profile=long` for a soak run).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobs_agent.config import AgentConfig, JobsConfig
from jobs_agent.dispatch import Dispatcher
from jobs_agent.emulator.presign import PLACEHOLDER_PREFIX
from jobs_agent.emulator.service import ControlError
from jobs_agent.jobs.status_details import sanitize_status_details, validate_status_details
from jobs_agent.redact import redact_mapping
from jobs_agent_handlers.api import JobRejected
from tests.helpers.agent_harness import THING, make_config, make_handler_dir, running_agent, runs
from tests.helpers.documents import any_document, mutated_documents, random_documents
from tests.hypothesis_profiles import examples

CPU_BOUND = pytest.mark.timeout(600)
"""For the fast properties. Not a wait: they are CPU work of a fixed size (500 random documents
cost about 12 s of CPU, nearly all of it Hypothesis drawing them), so their time grows with the
machine's load: at load 9-10 on 2 cores the random-JSON property took 113 s and 128 s, past the
suite's 120 s hang guard (seen once in a full run). The guard stays, scaled to that work."""


@pytest.fixture(scope="module")
def dispatcher(tmp_path_factory: pytest.TempPathFactory) -> Dispatcher:
    base = tmp_path_factory.mktemp("fuzz-docs")
    make_handler_dir(base)
    return Dispatcher(AgentConfig(thing_name=THING, jobs=JobsConfig(handler_dir=base / "handlers")))


def reported_reason(exc: JobRejected) -> str:
    """The reason as the engine reports it: redacted, then made to fit statusDetails."""
    details = sanitize_status_details(redact_mapping({"reason": exc.reason, **exc.details}))
    assert validate_status_details(details) is None
    return details["reason"]


def check_document(dispatcher: Dispatcher, document: dict[str, Any]) -> JobRejected | None:
    """The property: a handler and a plan, or `JobRejected` with a usable reason; nothing else."""
    try:
        dispatcher.resolve(document)
    except JobRejected as exc:
        assert isinstance(exc.reason, str) and exc.reason.strip(), exc
        assert reported_reason(exc).strip()
        with pytest.raises(JobRejected) as again:
            dispatcher.plan(document)
        assert again.value.reason == exc.reason  # deterministic: plan sees what resolve saw
        return exc
    plan = dispatcher.plan(document)
    assert plan, document
    for step in plan:
        assert step.timeout > 0 and step.executable
    return None


@CPU_BOUND
@settings(max_examples=examples(0.5))
@given(random_documents)
def test_random_json_documents_resolve_or_are_rejected(
    dispatcher: Dispatcher, document: dict[str, Any]
) -> None:
    check_document(dispatcher, document)


@CPU_BOUND
@settings(max_examples=examples(0.9))
@given(mutated_documents())
def test_mutated_valid_documents_resolve_or_are_rejected(
    dispatcher: Dispatcher, document: dict[str, Any]
) -> None:
    check_document(dispatcher, document)


@CPU_BOUND
@settings(max_examples=examples(0.2))
@given(
    st.recursive(
        st.just(1),
        lambda c: st.lists(c, max_size=2) | st.dictionaries(st.just("steps"), c, max_size=1),
        max_leaves=60,
    )
)
def test_arbitrary_nesting_under_steps_is_rejected(dispatcher: Dispatcher, nested: Any) -> None:
    document = {"version": "1.0", "steps": nested}
    check_document(dispatcher, document)


@settings(max_examples=examples(0.03))
@given(st.lists(any_document, min_size=1, max_size=8))
async def test_rejected_documents_through_the_real_engine(
    tmp_path: Path, dispatcher: Dispatcher, documents: list[dict[str, Any]]
) -> None:
    base = Path(tempfile.mkdtemp(dir=tmp_path))
    make_handler_dir(base)
    config = make_config(base)
    local = Dispatcher(config)
    async with running_agent(base, config) as harness:
        service = harness.service
        expected: dict[str, str | None] = {}
        for index, document in enumerate(documents):
            if check_document(local, document) is None and document:
                continue  # valid: this test only sends what must be refused
            job_id = f"bad-{index}"
            try:
                service.create_job(job_id, [THING], document)
            except ControlError:
                continue  # the control plane itself refuses it (over 32 KiB)
            if not document:
                expected[job_id] = "the execution has no job document"
            elif PLACEHOLDER_PREFIX in json.dumps(document):
                expected[job_id] = None  # re-signed on delivery: the reason may differ
            else:
                rejection = check_document(local, document)
                assert rejection is not None
                expected[job_id] = reported_reason(rejection)
        for job_id, reason in expected.items():
            execution = await harness.wait_terminal(job_id)
            assert str(execution.status) == "REJECTED", (job_id, execution)
            got = execution.status_details.get("reason", "")
            assert got.strip()
            if reason is not None:
                assert got == reason
            assert validate_status_details(execution.status_details) is None
        good = await harness.run_job("good-after", {"operation": "ok.sh"})
        assert str(good.status) == "SUCCEEDED", good
        for job_id in [*expected, "good-after"]:
            assert harness.terminal_reports(job_id) == {1: 1}, job_id
        assert runs(base) == {"good-after#1": 1}
        harness.assert_alive()
