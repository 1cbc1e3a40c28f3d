"""The engine hears the Jobs service's notifications inside the client's delivery of them
(`JobsClient.listen`, issue 18): a failure while handling one is logged and never reaches the
transport, and the notifications after it are still heard (a failure ended the engine's events'
task before, and with it every later wake-up by an event)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.helpers.agent_harness import captured_logs, make_config, running_agent


async def test_a_notification_that_fails_is_logged_and_the_next_is_heard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with captured_logs("warning") as logs:
        async with running_agent(tmp_path, make_config(tmp_path)) as harness:
            engine = harness.agent.engine
            heard = engine._heard
            failures: list[Any] = []

            def fails_once(event: Any) -> None:
                if not failures:
                    failures.append(event)
                    raise RuntimeError("a bug in the reaction")
                heard(event)

            monkeypatch.setattr(engine, "_heard", fails_once)
            # A job created while the agent is idle: its notifications wake the engine (the
            # first fails; the job is REJECTED: no handler of that name).
            execution = await harness.run_job("after-a-failure", {"operation": "no-such"})
            assert str(execution.status) == "REJECTED"
            harness.assert_alive()
    assert failures, "no notification reached the engine"
    said = logs.matching(
        lambda r: r.get("event") == "an event of the jobs service could not be handled"
    )
    assert len(said) == 1 and said[0]["level"] == "error"
