"""What a log line at the default level costs on its way through structlog's chain (issue 18: a
plugin job writes four at `info`): the fields are scrubbed and the None ones left out in one
pass, and every line is written by the one `PrintLogger` of the configuration. Counted with the
profiler hook, not timed; the lines themselves are what they were."""

from __future__ import annotations

import io
import json
import logging

import structlog

from jobs_agent import log as log_module
from jobs_agent import redact
from jobs_agent.log import configure_logging
from tests.helpers.calls import Calls


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_line_s_fields_are_scrubbed_without_a_call_per_plain_field(
    restore_logging: None,
) -> None:
    """A job's lines carry a job id, a number, a status and `namespace=None`: nothing of them
    can hold a secret, and the scrubber is not called for them (before: `redact_mapping`, a
    `redact_value` per field and a `redact_text` per text, 27 calls a line here with the
    builtins they call; now a field's name is asked about once). What can is still scrubbed."""
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    logger = structlog.get_logger("jobs_agent.engine")
    logger.info("ready", job_id="job", status="QUEUED")  # each name is asked about once
    calls = Calls((redact.__file__,))
    with calls.counting():
        for number in range(10):
            logger.info(
                "outcome reported",
                job_id=f"job-{number}",
                execution_number=1,
                namespace=None,
                status="SUCCEEDED",
            )
    assert calls.total == 0, calls.by_name.most_common()
    logger.info(
        "fetched",
        url="https://b.s3.amazonaws.com/f?X-Amz-Signature=abc&a=1",
        password="hunter2",
        nested={"token": "sig=1", "gone": None},
        empty_password="",
        count=3,
    )
    lines = _lines(stream)[1:]
    assert lines[0] == {
        "job_id": "job-0",
        "execution_number": 1,
        "status": "SUCCEEDED",
        "event": "outcome reported",
        "level": "info",
        "timestamp": lines[0]["timestamp"],
    }
    assert lines[-1]["url"] == "https://b.s3.amazonaws.com/f?X-Amz-Signature=REDACTED&a=1"
    assert lines[-1]["password"] == "REDACTED"
    assert lines[-1]["nested"] == {"token": "sig=REDACTED", "gone": None}
    assert lines[-1]["empty_password"] == "" and lines[-1]["count"] == 3


def test_every_line_is_written_by_the_configuration_s_one_logger(restore_logging: None) -> None:
    """A module's logger is bound again for every line (its level must follow a SIGHUP), and
    structlog's `PrintLoggerFactory` made a `PrintLogger` for each (before: 10 for 10 lines)."""
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    logger = structlog.get_logger("jobs_agent.engine")
    made = Calls((structlog.PrintLogger.__init__.__code__.co_filename,))
    with made.counting():
        for _ in range(10):
            logger.info("handler started")
    assert made.of("_output.py", "__init__") == 0
    assert len(_lines(stream)) == 10


def test_a_new_configuration_reaches_a_logger_already_used(restore_logging: None) -> None:
    """SIGHUP configures logging again: a module's logger used before writes at the new level,
    to the new stream."""
    first, second = io.StringIO(), io.StringIO()
    configure_logging("info", "json", first)
    logger = structlog.get_logger("jobs_agent.engine")
    logger.info("one")
    configure_logging("warning", "json", second)
    logger.info("dropped")
    logger.warning("two")
    assert [line["event"] for line in _lines(first)] == ["one"]
    assert [line["event"] for line in _lines(second)] == ["two"]
    assert log_module.enabled(logging.WARNING) and not log_module.enabled(logging.INFO)
