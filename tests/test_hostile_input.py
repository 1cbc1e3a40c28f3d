"""Hostile job documents and handler output, through the whole agent, checked at the service.

tests/test_dispatch_*.py check the dispatcher alone; here every case goes through the real
daemon (store, Jobs client, engine, dispatcher, sandbox with real processes) against the
embedded emulator, and the assertions are on what the SERVICE recorded: the final status, the
`reason` in statusDetails, that every statusDetails map obeys the API's limits, and that no
marker file a hostile document tried to create exists.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest

import jobs_agent.emulator.service as service_module
from jobs_agent.jobs.status_details import validate_status_details
from tests.helpers.agent_harness import (
    Harness,
    captured_logs,
    make_config,
    make_handler_dir,
    running_agent,
    runs,
    write_script,
)


def steps(handler: str, *, path: str | None = None, user: str | None = None, **extra: Any) -> Any:
    data: dict[str, Any] = {"handler": handler}
    if path is not None:
        data["path"] = path
    action: dict[str, Any] = {"name": "step", "type": "runHandler", "input": data}
    if user is not None:
        action["runAsUser"] = user
    return {"version": "1.0", "steps": [{"action": action}], **extra}


async def rejected(harness: Harness, job_id: str, document: dict[str, Any]) -> str:
    execution = await harness.run_job(job_id, document)
    assert str(execution.status) == "REJECTED", execution
    assert harness.terminal_reports(job_id) == {1: 1}
    for details in harness.details_seen(job_id):
        assert validate_status_details(details) is None
    return execution.status_details["reason"]


@pytest.fixture
def base(tmp_path: Path) -> Path:
    make_handler_dir(tmp_path)
    return tmp_path


async def test_handler_names_cannot_escape_the_handler_directory(base: Path) -> None:
    marker = base / "escaped"
    evil = write_script(base, "evil.sh", f"touch {marker}\n")
    (base / "handlers" / "link.sh").symlink_to(evil)
    sub = base / "handlers" / "sub"
    sub.mkdir(mode=0o755)
    async with running_agent(base) as harness:
        assert "is not a plain file name" in await rejected(harness, "dotdot", steps("../evil.sh"))
        assert "is not a plain file name" in await rejected(
            harness, "legacy-dotdot", {"operation": "../evil.sh"}
        )
        assert "is not a plain file name" in await rejected(harness, "absolute", steps(str(evil)))
        reason = await rejected(harness, "symlink", steps("link.sh", path="default"))
        assert f"resolves to {evil}, outside the handler directory" in reason
        assert "outside the handler directory" in await rejected(
            harness, "path-up", steps("evil.sh", path="..")
        )
        assert "outside the handler directory" in await rejected(
            harness, "path-sub-up", steps("evil.sh", path="sub/../..")
        )
        assert str((await harness.run_job("after", {"operation": "ok.sh"})).status) == "SUCCEEDED"
        harness.assert_alive()
    assert not marker.exists()
    assert runs(base) == {"after#1": 1}


async def test_handlers_writable_by_others_are_refused(base: Path) -> None:
    marker = base / "planted-ran"
    handlers = base / "handlers"
    write_script(handlers, "planted.sh", f"touch {marker}\n", mode=0o757)
    shared = handlers / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    write_script(shared, "tool.sh", f"touch {marker}\n")
    async with running_agent(base) as harness:
        reason = await rejected(harness, "file-o-w", steps("planted.sh", path="default"))
        assert reason == (
            f'step "step": handler {handlers / "planted.sh"} is writable by others (mode 0757)'
        )
        reason = await rejected(harness, "dir-o-w", steps("tool.sh", path="shared"))
        assert f"handler directory {shared} is writable by others (mode 0777)" in reason
        handlers.chmod(0o775)
        reason = await rejected(harness, "base-g-w", steps("ok.sh", path="default"))
        assert f"handler directory {handlers} is writable by its group (mode 0775)" in reason
        handlers.chmod(0o755)
    assert not marker.exists()
    assert runs(base) == {}


async def test_oversized_and_deeply_nested_documents_are_rejected(
    base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The emulator's control plane refuses documents over 32 KiB as AWS does, so its limit is
    lifted here: this is a broken service delivering what AWS never should."""
    monkeypatch.setattr(service_module, "MAX_DOCUMENT_BYTES", 10 * 1024 * 1024)
    big = {"operation": "ok.sh", "pad": "x" * 40_000}
    deep: dict[str, Any] = {"operation": "ok.sh"}
    node = deep
    for _ in range(200):
        node["next"] = {}
        node = node["next"]
    async with running_agent(base) as harness:
        reason = await rejected(harness, "big", big)
        size = len(json.dumps(big, separators=(",", ":")).encode())
        assert reason == f"the job document is {size} bytes; at most 32768 (32 KiB) are accepted"
        assert await rejected(harness, "deep", deep) == (
            "the job document is nested deeper than 32 levels"
        )
        ok = await harness.run_job("after", {"operation": "ok.sh"})
        assert str(ok.status) == "SUCCEEDED"
        harness.assert_alive()
    assert runs(base) == {"after#1": 1}


async def test_users_outside_the_sites_list_or_unknown_are_refused(base: Path) -> None:
    marker = base / "ran-as"
    write_script(base / "handlers", "who.sh", f"id -u > {marker}\n")
    async with running_agent(base, make_config(base, allowed_users=("daemon",))) as harness:
        assert await rejected(harness, "root", steps("who.sh", user="root")) == (
            "step \"step\": runAsUser 'root' is not in jobs.allowed_users (daemon)"
        )
        assert await rejected(harness, "unknown", steps("who.sh", user="no-such-user-x")) == (
            "step \"step\": runAsUser 'no-such-user-x': no such user on this device"
        )
        assert "is not a user name" in await rejected(
            harness, "nul", {"operation": "who.sh", "runAsUser": "root\u0000x"}
        )
        if os.geteuid() == 0:
            assert "is not in jobs.allowed_users" in await rejected(
                harness, "unlisted", steps("who.sh", user="nobody")
            )
            # The same rule for a step that names nobody: it would run as the agent (root).
            assert "which is not in jobs.allowed_users (daemon)" in await rejected(
                harness, "unnamed", steps("who.sh")
            )
    assert not marker.exists()


INJECTIONS = [
    "; rm -rf {tmp}/victim",
    "$(touch {marker})",
    "`touch {marker}`",
    "| touch {marker}",
    "a\ntouch {marker}",
    "&& touch {marker}",
    "*",
    "$HOME",
]


async def test_no_shell_ever_interprets_job_input(base: Path) -> None:
    marker = base / "pwned"
    victim = base / "victim"
    victim.mkdir()
    (victim / "keep").write_text("x")
    hostile = [s.format(tmp=base, marker=marker) for s in INJECTIONS]
    write_script(
        base / "handlers", "args.sh", 'shift; for a in "$@"; do printf "[%s]" "$a"; done\n'
    )
    legacy = {"operation": "args.sh", "args": hostile, "includeStdOut": True}
    device_client = {
        "version": "1.0",
        "includeStdOut": "true",
        "steps": [
            {
                "action": {
                    "name": "h",
                    "type": "runHandler",
                    "input": {"handler": "args.sh", "args": hostile},
                }
            },
        ],
    }
    command = {
        "version": "1.0",
        "includeStdOut": True,
        "steps": [
            {
                "action": {
                    "name": "c",
                    "type": "runCommand",
                    "input": {"command": f"echo,$(touch {marker}),`id`,; rm -rf {victim}"},
                }
            }
        ],
    }
    expected = "".join(f"[{a}]" for a in hostile).replace("\n", "\\n")
    async with running_agent(base) as harness:
        for job_id, document in (("legacy", legacy), ("steps", device_client)):
            execution = await harness.run_job(job_id, document)
            assert str(execution.status) == "SUCCEEDED", execution
            assert execution.status_details["stdout"] == expected
        execution = await harness.run_job("command", command)
        assert str(execution.status) == "SUCCEEDED", execution
        assert execution.status_details["stdout"] == f"$(touch {marker}) `id` ; rm -rf {victim}"
        harness.assert_alive()
    assert not marker.exists()
    assert (victim / "keep").exists()


async def test_control_characters_and_megabyte_output_stay_within_the_limits(base: Path) -> None:
    write_script(
        base / "handlers",
        "noisy.sh",
        # Progress with control characters and a 1 MB message, then a 1 MB line of output with
        # control characters, a NUL and invalid UTF-8, and a last line we must see in the tail.
        'printf \'{"percent": 10, "message": "bell\\\\u0007tab\\\\tnl\\\\n"}\\n\' >&3\n'
        'python3 -c \'import json,sys; sys.stdout.write(json.dumps({"percent": 50,'
        ' "message": "m" * 1048576, "details": {"bad key!": "\\x1b[31m"}}) + chr(10))\' >&3\n'
        'python3 -c \'import sys; sys.stdout.buffer.write(b"\\x07\\x1b[2J\\x00\\xff"'
        ' + b"y" * 1048576 + b"\\r\\nlast line\\x08 end\\n")\'\n'
        "printf 'err\\001\\002\\n' >&2\n",
    )
    config = make_config(base, progress_interval_seconds=0.01)
    async with running_agent(base, config) as harness:
        document = {"operation": "noisy.sh", "includeStdOut": True}
        execution = await harness.run_job("noisy", document)
        assert str(execution.status) == "SUCCEEDED", execution
        history = harness.details_seen("noisy")
        assert len(history) >= 2
        for details in history:
            assert validate_status_details(details) is None, details
        stdout = execution.status_details["stdout"]
        assert stdout.endswith("\\nlast line end")
        assert len(stdout) <= 1024
        assert execution.status_details["stderr"] == "err"
        harness.assert_alive()


PRESIGNED = "${aws:iot:s3-presigned-url:https://firmware.s3.amazonaws.com/image.bin}"
LITERAL_SIGNATURE = "0f3c" * 16


def fake_private_key() -> tuple[str, list[str]]:
    """A PEM private key (random bytes: never a real key) and its base64 body lines."""
    body = base64.b64encode(os.urandom(1200)).decode()
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    pem = "-----BEGIN PRIVATE KEY-----\n" + "\n".join(lines) + "\n-----END PRIVATE KEY-----\n"
    return pem, lines


async def test_secrets_never_reach_logs_or_status_details(base: Path) -> None:
    pem, key_lines = fake_private_key()
    key_file = base / "device.key"
    key_file.write_text(pem)
    seen_document = base / "seen-document.json"
    literal_url = (
        "https://firmware.s3.amazonaws.com/image.bin?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        f"&X-Amz-Credential=ASIAXAMPLE%2F20240101&X-Amz-Signature={LITERAL_SIGNATURE}"
    )
    handlers = base / "handlers"
    write_script(
        handlers,
        "leak.sh",
        f'cp "$JOBS_AGENT_DOCUMENT" {seen_document}\n'
        'shift; echo "downloading $*"\n'
        f"cat {key_file}\n"
        # A presigned URL reaches a handler in the environment, never in argv (ps shows argv).
        'echo "url again: $(printenv "${1#env:}")"\n',
    )
    write_script(handlers, "leak-fail.sh", f'cat {key_file} >&2\necho "$2" >&2\nexit 3\n')
    document = {
        "operation": "leak.sh",
        "args": [PRESIGNED, literal_url],
        "includeStdOut": True,
        "url": PRESIGNED,
        "mirror": literal_url,
    }
    failing = {"operation": "leak-fail.sh", "args": [literal_url], "url": PRESIGNED}
    with captured_logs("debug") as logs:
        async with running_agent(base) as harness:
            ok = await harness.run_job("leak", document)
            failed = await harness.run_job("leak-fail", failing)
            harness.assert_alive()
    assert str(ok.status) == "SUCCEEDED", ok
    assert str(failed.status) == "FAILED", failed
    delivered = json.loads(seen_document.read_text())
    signatures = [LITERAL_SIGNATURE]
    for value in (delivered["url"], delivered["args"][0]):
        assert "X-Amz-Signature=" in value  # the emulator signed it on delivery
        signatures.append(value.split("X-Amz-Signature=")[1].split("&")[0])
    reported = [
        value
        for job_id in ("leak", "leak-fail")
        for details in harness.details_seen(job_id)
        for value in details.values()
    ]
    # The output itself is reported (its tail), with the secrets taken out.
    assert any("url again: https://firmware.s3.amazonaws.com/image.bin?" in v for v in reported)
    assert any("[REDACTED PRIVATE KEY]" in value for value in reported)
    assert logs.records, "no logs captured"
    places = {"logs": logs.text, "statusDetails": "\n".join(reported)}
    for where, text in places.items():
        for signature in signatures:
            assert signature not in text, f"presigned URL signature in {where}"
        for line in key_lines:
            assert line not in text, f"private key material in {where}: {line}"
