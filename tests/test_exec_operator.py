"""`jobs-agent exec` as an operator and a plugin author use it (real processes): the same
configuration as every command (13.4), handler environment (13.5), plugins that do not import
or raise (13.7), broken `#!` lines at dry-run (13.8), live output, exit codes and no temporary
directory left behind (13.13)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

JOB = {
    "version": "1.0",
    "includeStdOut": "true",
    "steps": [{"action": {"name": "env", "type": "runCommand", "input": {"command": "env"}}}],
}


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None, **kw: Any) -> Any:
    environment = {"PATH": os.environ["PATH"], "TMPDIR": str(cwd / "tmp"), **(env or {})}
    (cwd / "tmp").mkdir(exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", "jobs_agent", *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        **kw,
    )


def write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


def doc(tmp_path: Path, document: dict[str, Any], name: str = "job.json") -> str:
    return str(write(tmp_path / name, json.dumps(document)))


def test_exec_takes_the_environment_overrides_every_command_takes(tmp_path: Path) -> None:
    job = doc(tmp_path, JOB)
    allowed = run_cli("exec", job, cwd=tmp_path)
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    restricted = run_cli(
        "exec", job, cwd=tmp_path, env={"JOBS_AGENT_JOBS__ALLOWED_USERS": "[daemon]"}
    )
    assert restricted.returncode == 3, restricted.stdout + restricted.stderr
    assert "which is not in jobs.allowed_users (daemon)" in restricted.stdout
    assert "status: REJECTED" in restricted.stdout
    bad = run_cli("exec", job, cwd=tmp_path, env={"JOBS_AGENT_JOBS__KILL_GRACE_SECONDS": "x"})
    assert bad.returncode == 2
    assert "jobs.kill_grace_seconds: expected a number" in bad.stderr


def test_handlers_get_the_configured_environment_and_nothing_else(tmp_path: Path) -> None:
    config = write(
        tmp_path / "config.yaml",
        "connection: {transport: local}\n"
        "jobs:\n  handler_environment: [TZ=Europe/Paris, http_proxy, https_proxy]\n",
    )
    result = run_cli(
        "exec",
        doc(tmp_path, JOB),
        "--config",
        str(config),
        cwd=tmp_path,
        env={"http_proxy": "http://proxy.test:3128", "SECRET_OF_THE_AGENT": "x"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    stdout = json.loads(result.stdout.split("statusDetails: ", 1)[1].rsplit("status:", 1)[0])[
        "stdout"
    ]
    variables = dict(line.split("=", 1) for line in stdout.split("\\n"))
    assert variables["TZ"] == "Europe/Paris"
    assert variables["http_proxy"] == "http://proxy.test:3128"
    assert "https_proxy" not in variables  # passed through only when the agent has it
    assert "SECRET_OF_THE_AGENT" not in variables


def test_exit_status_says_failed_or_rejected_and_no_temporary_directory_is_left(
    tmp_path: Path,
) -> None:
    failed = run_cli("exec", doc(tmp_path, {"operation": "false"}), cwd=tmp_path)
    rejected = run_cli("exec", doc(tmp_path, {"version": "2.0", "steps": []}), cwd=tmp_path)
    usage = run_cli("exec", str(tmp_path / "missing.json"), cwd=tmp_path)
    assert (failed.returncode, rejected.returncode, usage.returncode) == (1, 3, 2)
    assert "status: FAILED" in failed.stdout and "status: REJECTED" in rejected.stdout
    assert list((tmp_path / "tmp").iterdir()) == []
    kept = run_cli("exec", doc(tmp_path, JOB), "--state-dir", str(tmp_path / "kept"), cwd=tmp_path)
    log = tmp_path / "kept" / "logs" / "local-exec-1.log"
    assert f"output log: {log}" in kept.stdout and log.exists()
    assert not (tmp_path / "kept" / "jobs" / "local-exec").exists()


def test_verbose_shows_the_handler_output_while_it_runs(tmp_path: Path) -> None:
    release = tmp_path / "release"
    handlers = tmp_path / "handlers"
    handlers.mkdir(mode=0o755)
    write(
        handlers / "slow.sh",
        f"#!/bin/sh\necho first-line\necho to-stderr >&2\n"
        f"while [ ! -e {release} ]; do sleep 0.05; done\necho last-line\n",
        0o755,
    )
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jobs_agent",
            "exec",
            doc(tmp_path, {"operation": "slow.sh"}),
            "--handler-dir",
            str(handlers),
            "--verbose",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        lines = []
        while "first-line" not in lines:  # arrives while the handler still waits
            line = process.stdout.readline()
            assert line, "exec ended before the handler printed"
            lines.append(line.strip())
        assert process.poll() is None
        release.touch()
        rest, errors = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0
    assert "last-line" in rest and "status: SUCCEEDED" in rest
    assert "to-stderr" in errors


def test_plugins_that_do_not_import_or_raise_are_reported_not_crashed(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir(mode=0o755)
    write(plugins / "boom.py", "class Boom:\n    async def run(self, ctx):\n        1 / 0\n")
    write(plugins / "broken.py", "import no_such_module_here\n")
    config = write(
        tmp_path / "config.yaml",
        "connection: {transport: local}\n"
        f"jobs:\n  plugin_path: [{plugins}]\n"
        "handlers:\n  boom: boom:Boom\n  broken: broken:Broken\n",
    )
    broken = run_cli(
        "exec", doc(tmp_path, {"operation": "broken"}), "--config", str(config), cwd=tmp_path
    )
    assert broken.returncode == 1
    assert "cannot load the handler: cannot load handler broken:Broken" in broken.stdout
    assert "No module named 'no_such_module_here'" in broken.stdout
    assert "Traceback" not in broken.stderr
    dry = run_cli(
        "exec",
        doc(tmp_path, {"operation": "broken"}),
        "--config",
        str(config),
        "--dry-run",
        cwd=tmp_path,
    )
    assert dry.returncode == 1 and "would be FAILED: cannot load the handler" in dry.stdout
    boom = run_cli(
        "exec", doc(tmp_path, {"operation": "boom"}), "--config", str(config), cwd=tmp_path
    )
    assert boom.returncode == 1
    assert '"reason": "ZeroDivisionError: division by zero"' in boom.stdout
    logged = [json.loads(line) for line in boom.stderr.splitlines() if line.startswith("{")]
    raised = next(r for r in logged if r["event"] == "handler raised")
    assert (
        "Traceback" in raised["exception"]
        and f'{plugins / "boom.py"}", line 3' in (raised["exception"])
    )


def test_generic_module_names_on_pythonpath_do_not_break_the_agent(tmp_path: Path) -> None:
    """A user's `handlers.py` (here also the plugin itself) and a package `agent/` that would
    shadow the agent's folders if they were its import names; the plugin imports a helper from
    its own directory through jobs.plugin_path."""
    plugins = tmp_path / "plugins"
    plugins.mkdir(mode=0o755)
    write(plugins / "agent" / "__init__.py", "raise ImportError('the wrong agent package')\n")
    write(plugins / "helper.py", "GREETING = 'hello from a helper'\n")
    write(
        plugins / "handlers.py",
        "import helper\n\nclass Hello:\n    async def run(self, ctx):\n"
        "        return {'greeting': helper.GREETING}\n",
    )
    config = write(
        tmp_path / "config.yaml",
        "connection: {transport: local}\n"
        f"jobs:\n  plugin_path: [{plugins}]\nhandlers:\n  hello: handlers:Hello\n",
    )
    env = {"PYTHONPATH": str(plugins)}
    version = run_cli("--version", cwd=tmp_path, env=env)
    assert version.returncode == 0 and version.stdout.startswith("jobs-agent ")
    result = run_cli(
        "exec",
        doc(tmp_path, {"operation": "hello"}),
        "--config",
        str(config),
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert '"greeting": "hello from a helper"' in result.stdout
    builtin = run_cli(
        "exec",
        doc(tmp_path, {"version": "1.0", "steps": [JOB["steps"][0]]}, "steps.json"),
        cwd=tmp_path,
        env=env,
    )
    assert builtin.returncode == 0, builtin.stdout + builtin.stderr


def test_a_plugin_directory_others_can_write_is_refused(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    plugins.chmod(0o777)
    write(plugins / "p.py", "class P:\n    async def run(self, ctx):\n        return None\n")
    config = write(
        tmp_path / "config.yaml",
        f"connection: {{transport: local}}\njobs:\n  plugin_path: [{plugins}]\n"
        "handlers:\n  p: p:P\n",
    )
    result = run_cli(
        "exec", doc(tmp_path, {"operation": "p"}), "--config", str(config), cwd=tmp_path
    )
    assert result.returncode == 1
    assert f"jobs.plugin_path: plugin directory {plugins} is writable by others" in result.stdout


@pytest.mark.parametrize("first", ["#!/bin/shh", "#!/bin/sh\r"])
def test_dry_run_names_a_broken_interpreter_line(tmp_path: Path, first: str) -> None:
    handlers = tmp_path / "handlers"
    handlers.mkdir(mode=0o755)
    write(handlers / "bad.sh", f"{first}\necho hi\n", 0o755)
    result = run_cli(
        "exec",
        doc(tmp_path, {"operation": "bad.sh"}),
        "--handler-dir",
        str(handlers),
        "--dry-run",
        cwd=tmp_path,
    )
    assert result.returncode == 3
    assert "would be REJECTED" in result.stdout
    assert ("interpreter /bin/shh not found" if "shh" in first else "CRLF line endings") in (
        result.stdout
    )


def test_exec_warns_about_progress_lines_it_cannot_use(tmp_path: Path) -> None:
    handlers = tmp_path / "handlers"
    handlers.mkdir(mode=0o755)
    write(handlers / "p.sh", "#!/bin/sh\necho '{\"percnt\": 5}' >&3\necho 'half' >&3\n", 0o755)
    result = run_cli(
        "exec", doc(tmp_path, {"operation": "p.sh"}), "--handler-dir", str(handlers), cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "handler progress ignored" in result.stderr
    assert "unknown progress key 'percnt' (did you mean" in result.stderr
    assert "a progress line is not JSON and was ignored: 'half'" in result.stderr
