"""What `jobs-agent run` loads before its first request: only what it uses (issue 18).

Every module loaded at start-up costs start-up time and resident memory for the agent's whole
life on a gateway; the benchmark (`python -m benchmarks startup`) measures both. These tests pin
what was taken out: the emulator (reached through `sim serve --help`'s list of readings) and the
other commands, importlib.metadata (the plugin entry-point scan, done at the first plugin
lookup), the dispatcher and everything that runs a job (built at the first job), and the
features an agent is not configured for (system update, the consent socket, maintenance
windows).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from jobs_agent.emulator.embedded import Emulator
from tests.fixtures.broker import Mosquitto
from tests.harness import (
    AgentProcess,
    agent_config,
    awscrt_connection,
    config_yaml,
    terminal_statuses,
    wait_terminal,
    wait_until,
    write_handler,
)

PROBE = """
import json, sys
from jobs_agent.commands.parser import build_parser
from jobs_agent.config import load_config
from jobs_agent.dispatch.plugins import PluginRegistry

args = build_parser().parse_args(["run", "--config", sys.argv[1]])
load_config(args.config)
import jobs_agent.daemon, jobs_agent.transport.paho
registry = PluginRegistry.discover({})
loaded_at_start = sorted(sys.modules)
names = registry.names()  # the first lookup reads the entry points
print(json.dumps({"start": loaded_at_start, "names": names, "after": sorted(sys.modules)}))
"""


def test_the_agent_starts_without_the_emulator_or_the_entry_point_scan(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        json.dumps(
            {
                "thing_name": "gw-imports",
                "connection": {"transport": "paho", "endpoint": "127.0.0.1", "port": 1883},
                "jobs": {"handler_dir": str(tmp_path / "handlers")},
                "state_dir": str(tmp_path / "state"),
            }
        )
    )
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(config)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    loaded = json.loads(out)
    start = set(loaded["start"])
    assert "jobs_agent.emulator.readings" in start  # `sim serve --help` lists the readings
    assert not {"jobs_agent.emulator.service", "jobs_agent.emulator.core"} & start
    assert "importlib.metadata" not in start
    # The built-in plugins are there at the first lookup, with the entry points read then,
    # without importlib.metadata where the packages are plain directories (dispatch.entry_points).
    assert {"download-file", "reboot"} <= set(loaded["names"])
    assert "importlib.metadata" not in set(loaded["after"])


def test_the_help_is_as_wide_as_argparse_would_make_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`parser.HelpFormatter` finds the width without shutil, as shutil would: $COLUMNS, else the
    terminal (none here: 80); the sub-commands' parsers take it too."""
    import argparse

    from jobs_agent import cli
    from jobs_agent.commands import parser

    def run_help() -> str:
        with pytest.raises(SystemExit):
            cli.main(["run", "--help"])
        return capsys.readouterr().out

    def with_argparse_width(self: Any, prog: str, *args: Any) -> None:
        argparse.HelpFormatter.__init__(self, prog)

    helps = []
    for columns in ("50", "133", None):
        if columns is None:
            monkeypatch.delenv("COLUMNS", raising=False)
        else:
            monkeypatch.setenv("COLUMNS", columns)
        ours = run_help()
        with monkeypatch.context() as patched:
            patched.setattr(parser.HelpFormatter, "__init__", with_argparse_width)
            assert ours == run_help()
        helps.append(ours)
    assert helps[0] != helps[1]  # the width was honoured


PLAIN_RUNS = [
    ["run"],
    ["run", "--config", "/etc/jobs-agent/config.yaml"],
    ["run", "--config=relative.yaml", "--log-level", "debug"],
    ["run", "-c", "a.yaml", "--log-level=error", "--config", "b.yaml"],
    ["run", "--config", ""],
]
NOT_PLAIN_RUNS = [
    ["run", "--help"],
    ["run", "--dry-run"],
    ["run", "--config", "a.yaml", "--watch"],
    ["run", "--conf", "a.yaml"],  # argparse's abbreviation
    ["run", "-ca.yaml"],
    ["run", "-c=a.yaml"],  # argparse's value would be "=a.yaml"
    ["run", "--config", "-x"],
    ["run", "--config"],
    ["run", "--log-level", "loud"],
    ["run", "extra"],
    ["run", "--", "--config", "a.yaml"],
]


def test_a_plain_run_is_parsed_as_argparse_would_parse_it() -> None:
    """`jobs-agent run` as a service manager starts it is read without argparse (issue 18), into
    the very arguments argparse would make; every other command line is argparse's."""
    from jobs_agent.cli import parse_arguments
    from jobs_agent.commands.parser import build_parser
    from jobs_agent.commands.run import plain_arguments

    for argv in PLAIN_RUNS:
        parsed = plain_arguments(argv[1:])
        assert parsed is not None, argv
        assert vars(parsed) == vars(build_parser(argv).parse_args(argv)), argv
        assert parse_arguments(argv) == parsed
    for argv in NOT_PLAIN_RUNS:
        assert plain_arguments(argv[1:]) is None, argv


# -- a real `jobs-agent run` -------------------------------------------------------------------
THING = "gw-imports"
NOT_AT_START = {
    # Running a job: the router, the sandbox, the steps, the plugins (issue 18, at the first job).
    "jobs_agent.dispatch.router",
    "jobs_agent.dispatch.process",
    "jobs_agent.dispatch.steps",
    "jobs_agent.dispatch.devicec",
    "jobs_agent.dispatch.scripts",
    "jobs_agent.dispatch.signing",
    "jobs_agent.dispatch.s3url",
    "jobs_agent_handlers.download_file",
    # The engine's per-job parts: the runner and what only it uses (the supervisor, deferrals,
    # the document refresher, the progress reporter, the handler's context), built at the first
    # record processed (issue 18).
    "jobs_agent.engine.runner",
    "jobs_agent.engine.supervision",
    "jobs_agent.engine.deferral",
    "jobs_agent.engine.refresh",
    "jobs_agent.engine.progress",
    "jobs_agent.engine.context",
    "jobs_agent.schedule.clock",
    # A step's process group, the output logs and the job directories: at the first step and
    # the first job's end; the start-up sweep of leftover groups needs only the choosing and
    # sweeping part of containment (issue 18).
    "jobs_agent.dispatch.job_groups",
    "jobs_agent.dispatch.output",
    "jobs_agent.engine.jobdirs",
    # Features that are not configured here: system update, the consent socket, windows.
    "jobs_agent_handlers.system_update.rauc",
    "jobs_agent_handlers.system_update.swupdate",
    "jobs_agent_handlers.system_update.health",
    # Its settings too, when the file has no `system_update:` section (the handler's defaults,
    # built at the first job that runs it; 47 kB traced).
    "jobs_agent_handlers.system_update",
    "jobs_agent_handlers.system_update.settings",
    "jobs_agent.consent.server",
    "jobs_agent.consent.protocol",  # the socket's protocol; its default path is a setting's
    "jobs_agent.consent.decisions",
    "jobs_agent.consent.document",
    "jobs_agent.dispatch.agent_fields",
    # The inventory's sources, when `inventory.sources` lists none (the agent's own record is
    # read through `inventory.reading`).
    "jobs_agent.inventory.sources",
    "jobs_agent.inventory.model",  # a job's packages and the report's: at the first of either
    # The shadow client, its topics and errors, and the inventory's report, when there is
    # nothing to report (loaded with the first report: `shadow.first_use`).
    "jobs_agent.shadow.client",
    "jobs_agent.shadow.topics",
    "jobs_agent.shadow.errors",
    "jobs_agent.inventory.report",
    # The recovery decision, when there is no record to act on (loaded with the first one).
    "jobs_agent.engine.recovery",
    # The plugin machinery, when `jobs.plugin_path` names no directory to check at start.
    "jobs_agent.dispatch.plugins",
    "jobs_agent.schedule.cron",
    "zoneinfo",
    # The windows themselves, when none is configured (their empty set is in `schedule.windows`;
    # loaded with the first job, whose document may name one).
    "jobs_agent.schedule.maintenance",
    # The handler API's protocols (a handler, its context, the MQTT link it is lent): the engine
    # reads how a job ends from `jobs_agent_handlers.outcome` (issue 18).
    "jobs_agent_handlers.api",
    # The other commands, the emulator, and what only an error message needs.
    "jobs_agent.commands.sim",
    "jobs_agent.commands.sim_fleet",
    "jobs_agent.commands.exec_",
    "jobs_agent.commands.demo",
    "jobs_agent.emulator",
    "jobs_agent.emulator.readings",
    "difflib",
    "importlib.metadata",
    # What libraries import for names the daemon never reads, loaded at a first use
    # (commands/deferred.py): structlog's deprecated thread-local context. (`ipaddress` too,
    # which this venv's editable install loads before the agent starts: test_deferred_imports.py
    # checks it as an installed package runs.)
    "structlog.threadlocal",
    # The argument parser: a plain `run` is read without it (0.4 MB resident with gettext).
    "jobs_agent.commands.parser",
    "argparse",
    "gettext",
}

NOT_AT_START_WITHOUT_PAHO = {
    # paho imports these itself (urllib.request, email, tempfile); without it nothing needs them
    # at start-up: awsiotsdk's SDK metrics (importlib.metadata), argparse's terminal width
    # (shutil, with lzma and bz2), the random ids of the exchange and the state database
    # (secrets), the reconnect jitter before a first failure (random).
    "paho.mqtt.client",
    "shutil",
    "lzma",
    "bz2",
    "secrets",
    "random",
    # OpenSSL's digests (0.6 MB resident): the cgroup base's tag takes the interpreter's own
    # SHA-2; paho imports hashlib itself. The Unicode table (0.23 MB), read at the first text
    # checked; paho's connection loads it through the idna codec of `getaddrinfo`.
    "hashlib",
    "_hashlib",
    "unicodedata",
}

NOT_AT_START_OVER_PAHO = {
    # What paho's `import urllib.request` loaded, for a proxy read only with PySocks installed:
    # the daemon defers it to its first use (commands/deferred.py; 2.1 MB resident, 42 M
    # instructions before the first request).
    "urllib.request",
    "http.client",
    "email.parser",
    "email.feedparser",
    "tempfile",
    "shutil",
    "bz2",
    "lzma",
}

NOT_AT_START_OVER_AWSCRT_MTLS = {
    # awsiotsdk's client builder and the package it is in (the CRT's MQTT 3.1.1 client and its
    # request-response client): the mTLS client is built from awscrt's own classes; the builder
    # is for WebSockets only. SigV4 signing (`awscrt.auth`) is for WebSockets only too.
    "awsiot",
    "awsiot.mqtt5_client_builder",
    "awscrt.mqtt",
    "awscrt.mqtt_request_response",
    "awscrt.auth",
}

NOT_AT_START_OVER_PLAIN_TCP = {
    # The "idna" codec, with the Unicode table (0.23 MB) and stringprep: what `getaddrinfo` does
    # with a host name given as text, for an ASCII name the same bytes (paho's connection takes
    # the bytes; TLS's server name still takes the codec).
    "encodings.idna",
    "unicodedata",
    "stringprep",
}


MODULES_HOOK = """
import os, signal, sys

_pairs = []


def _compiled(event, args):
    if event == "compile" and args[1] == "<string>" and b" def __setattr__(" in bytes(args[0]):
        _pairs.append(1)


sys.addaudithook(_compiled)


def _defined(prefix):
    # (name, class) of each dataclass a loaded module whose name starts with prefix defines
    import dataclasses

    for name, module in list(sys.modules.items()):
        if not name.startswith(prefix):
            continue
        for value in list(vars(module).values()):
            if (
                isinstance(value, type)
                and dataclasses.is_dataclass(value)
                and value.__module__ == name
            ):
                yield name + "." + value.__qualname__, value


def _init_not_compiled():
    for name, value in _defined("jobs_agent"):
        if type(vars(value).get("__init__")).__name__ == "_FirstInit":
            yield name


def _frozen_by_dataclasses():
    import dataclasses

    shared_setattr = getattr(sys.modules.get("jobs_agent.datamodel"), "_frozen_setattr", None)
    for name, value in _defined(""):
        if value.__dataclass_params__.frozen and (
            value.__setattr__ is not shared_setattr
            or any(dataclasses.is_dataclass(base) for base in value.__mro__[1:])
        ):
            yield name


def _undocumented():
    for name, value in _defined("jobs_agent"):
        if (value.__doc__ or "").startswith(value.__name__ + "("):
            yield name


def _with_own_methods():
    datamodel = sys.modules.get("jobs_agent.datamodel")
    shared = getattr(datamodel, "_repr", None)
    shared_setattr = getattr(datamodel, "_frozen_setattr", None)
    for name, value in _defined("jobs_agent"):
        if value.__repr__ is not shared or (
            value.__dataclass_params__.frozen and value.__setattr__ is not shared_setattr
        ):
            yield name


def _write_modules(signum, frame):
    path = os.environ["JOBS_AGENT_TEST_MODULES"]
    with open(path + ".dataclasses", "w") as out:
        out.write("\\n".join(sorted(_undocumented())))
    with open(path + ".own_methods", "w") as out:
        out.write("\\n".join(sorted(_with_own_methods())))
    with open(path + ".uncompiled", "w") as out:
        out.write("\\n".join(sorted(_init_not_compiled())))
    with open(path + ".pairs", "w") as out:
        out.write(f"{len(_pairs)} {len(list(_frozen_by_dataclasses()))}")
    with open(path + ".frozen_by_dataclasses", "w") as out:
        out.write("\\n".join(sorted(n for n in _frozen_by_dataclasses() if n.startswith("jobs_"))))
    modules = list(sys.modules.items())
    loaded = [name for name, module in modules if type(module).__name__ != "_Deferred"]
    with open(path + ".tmp", "w") as out:
        out.write("\\n".join(sorted(loaded)))
    os.replace(path + ".tmp", path)


signal.signal(signal.SIGUSR1, _write_modules)
"""
"""A `sitecustomize` for the agent's process: on SIGUSR1 it writes the names of the modules
loaded (in sys.modules, but a stand-in for one not loaded yet: commands/deferred.py; the agent
does not use SIGUSR1), and beside them the agent's dataclasses that have no docstring
of their own. `-X importtime` would not do: it misses what `importlib.import_module` loads, as
the command modules are."""


def hooked_env(tmp_path: Path) -> tuple[dict[str, str], Path]:
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(MODULES_HOOK)
    dump = tmp_path / "modules.txt"
    path = os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": path, "JOBS_AGENT_TEST_MODULES": str(dump)}, dump


async def loaded_modules(agent: AgentProcess, dump: Path) -> set[str]:
    """What the running agent has in sys.modules now."""
    dump.unlink(missing_ok=True)
    agent.signal(signal.SIGUSR1)
    await wait_until(dump.exists, 20, "the agent's list of modules")
    return set(dump.read_text().split())


OWN_METHODS_AT_START = {
    "jobs_agent.transport.exchange._Waiter",  # eq=False: compared by identity
    "jobs_agent.transport.shared._Filter",  # eq=False
}
"""The dataclasses an idle agent defines that are not `@model`s (datamodel.py), each with a
`__repr__` of its own: every other shares `__repr__`, `__eq__` and `__hash__`, and a frozen one
`__setattr__` and `__delattr__` (issue 18)."""


def dataclasses_with_own_methods(dump: Path) -> set[str]:
    return set(Path(f"{dump}.own_methods").read_text().split())


def frozen_pairs_compiled(dump: Path) -> tuple[int, int]:
    """How many `__setattr__`s were compiled from text in the agent (the frozen pair dataclasses
    writes for a frozen class, an `exec` each with its `__delattr__`), and how many frozen
    dataclasses it holds that dataclasses made frozen itself: the libraries' and the models that
    derive from another dataclass (datamodel.py). Every other frozen model is made without the
    pair (issue 18: 49 pairs, 98 of the 190 functions compiled before the first request)."""
    compiled, below = Path(f"{dump}.pairs").read_text().split()
    return int(compiled), int(below)


FROZEN_BY_DATACLASSES_AT_START: set[str] = set()
"""The agent's models below another dataclass, each with the frozen pair dataclasses compiles
(an `exec` each of `__setattr__` and `__delattr__`) when it is defined, before the first
request: none. The Jobs replies that carry an execution (jobs/models.py) and the transports'
options (transport/options.py) declare their own fields, about 1.1 M instructions a class less
(issue 18)."""


def models_frozen_by_dataclasses(dump: Path) -> set[str]:
    """The agent's own dataclasses that dataclasses made frozen itself (its pair compiled)."""
    return set(Path(f"{dump}.frozen_by_dataclasses").read_text().split())


NOT_MADE_BEFORE_A_JOB = {
    "jobs_agent.jobs.models.JobExecution",
    "jobs_agent.jobs.models.DescribeReply",
    "jobs_agent.jobs.models.UpdateReply",
    "jobs_agent.jobs.models.UpdateRequest",
}
"""Models an idle agent defines but makes no instance of: their `__init__`, which dataclasses
would have compiled with the class, is compiled at their first call (datamodel.py; 40 of the 56
models of an idle paho agent, issue 18)."""


def models_not_compiled(dump: Path) -> set[str]:
    """The agent's models whose `__init__` was not called yet, so not compiled."""
    return set(Path(f"{dump}.uncompiled").read_text().split())


def undocumented_dataclasses(dump: Path) -> list[str]:
    """The agent's dataclasses loaded at the last `loaded_modules` that have no docstring: for
    each, `dataclasses` builds one from `inspect.signature` when the class is defined, which
    formats every field's annotation and default (a third of the time an agent's start spent
    defining its dataclasses, issue 18)."""
    return Path(f"{dump}.dataclasses").read_text().split()


async def test_an_idle_agent_has_loaded_only_what_it_needs_and_the_rest_at_its_first_job(
    tmp_path: Path, mosquitto: Mosquitto, emulator: Emulator
) -> None:
    """A real `jobs-agent run` on a real broker (plain TCP to `localhost`), idle after its first
    StartNextPendingJobExecution (STATUS=idle): nothing of running a job, of the features it is
    not configured for, of the other commands, or of Unicode host names is loaded. Its first job
    loads the dispatcher, and runs."""
    write_handler(tmp_path / "handlers", "hello", "#!/bin/sh\necho hello\n")
    config = agent_config(tmp_path, mosquitto.port, thing=THING)
    plain = dataclasses.replace(config.connection, endpoint="localhost")  # a name to resolve
    path = tmp_path / "config.yaml"
    path.write_text(config_yaml(dataclasses.replace(config, connection=plain)))
    env, dump = hooked_env(tmp_path)
    agent = AgentProcess(config_path=path, workdir=tmp_path, env=env)
    try:
        agent.start()
        await agent.wait_ready()
        await agent.wait_message("STATUS=idle")
        idle = await loaded_modules(agent, dump)
        assert {"jobs_agent.commands.run", "jobs_agent.engine.engine", "paho.mqtt.client"} <= idle
        unwanted = (NOT_AT_START | NOT_AT_START_OVER_PLAIN_TCP | NOT_AT_START_OVER_PAHO) & idle
        assert not unwanted, sorted(unwanted)
        assert undocumented_dataclasses(dump) == []
        assert dataclasses_with_own_methods(dump) <= OWN_METHODS_AT_START
        compiled, frozen_by_dataclasses = frozen_pairs_compiled(dump)
        assert compiled <= frozen_by_dataclasses, (compiled, frozen_by_dataclasses)
        assert models_frozen_by_dataclasses(dump) <= FROZEN_BY_DATACLASSES_AT_START
        assert models_not_compiled(dump) >= NOT_MADE_BEFORE_A_JOB
        emulator.service.create_job("first", [THING], {"operation": "hello"})
        execution = await wait_terminal(emulator, "first", THING)
        assert str(execution.status) == "SUCCEEDED", execution.status_details
        assert terminal_statuses(emulator, "first") == ["SUCCEEDED"]  # reported once
        after = await loaded_modules(agent, dump)
        assert {
            "jobs_agent.engine.runner",
            "jobs_agent.engine.supervision",
            "jobs_agent.dispatch.job_groups",
            "jobs_agent.dispatch.output",
            "jobs_agent.dispatch.router",
            "jobs_agent.dispatch.process",
            "jobs_agent.engine.recovery",
            "jobs_agent.schedule.maintenance",
        } <= after
        made_for_the_job = {
            "jobs_agent.jobs.models.JobExecution",
            "jobs_agent.jobs.models.UpdateRequest",
        }
        assert not made_for_the_job & models_not_compiled(dump)
        agent.signal(signal.SIGTERM)
        assert await agent.wait_exit() == 0
    finally:
        agent.kill()


async def test_an_idle_agent_over_awscrt_has_not_read_the_sdks_package_metadata(
    tmp_path: Path, mosquitto: Mosquitto, emulator: Emulator
) -> None:
    """The production transport builds its client without awsiotsdk's SDK metrics, whose
    version string comes from `importlib.metadata` (2.6 MB resident, 31 ms), and the agent
    takes no OpenSSL digest and no Unicode table before its first job, nor awsiotsdk's client
    builder (its mTLS client is built from awscrt's own classes): a real `jobs-agent run` over
    awscrt (mTLS to mosquitto), idle after its first request, has not loaded them, nor paho,
    nor anything of running a job; and its first job runs."""
    write_handler(tmp_path / "handlers", "hello", "#!/bin/sh\necho hello\n")
    config = agent_config(tmp_path, mosquitto.port, thing=THING)
    config = dataclasses.replace(config, connection=awscrt_connection(mosquitto))
    path = tmp_path / "config.yaml"
    path.write_text(config_yaml(config))
    env, dump = hooked_env(tmp_path)
    agent = AgentProcess(config_path=path, workdir=tmp_path, env=env)
    try:
        agent.start()
        await agent.wait_ready()
        await agent.wait_message("STATUS=idle")
        idle = await loaded_modules(agent, dump)
        assert {"jobs_agent.transport.awscrt", "awscrt.mqtt5"} <= idle
        unwanted = (NOT_AT_START | NOT_AT_START_WITHOUT_PAHO | NOT_AT_START_OVER_AWSCRT_MTLS) & idle
        assert not unwanted, sorted(unwanted)
        assert undocumented_dataclasses(dump) == []
        assert dataclasses_with_own_methods(dump) <= OWN_METHODS_AT_START
        compiled, frozen_by_dataclasses = frozen_pairs_compiled(dump)
        assert compiled <= frozen_by_dataclasses, (compiled, frozen_by_dataclasses)
        emulator.service.create_job("first-crt", [THING], {"operation": "hello"})
        execution = await wait_terminal(emulator, "first-crt", THING)
        assert str(execution.status) == "SUCCEEDED", execution.status_details
        assert terminal_statuses(emulator, "first-crt") == ["SUCCEEDED"]  # reported once
        agent.signal(signal.SIGTERM)
        assert await agent.wait_exit() == 0
    finally:
        agent.kill()


async def test_an_idle_agent_builds_its_shadow_client_with_its_first_report(
    tmp_path: Path, mosquitto: Mosquitto, emulator: Emulator
) -> None:
    """The shadow client is built when the agent first has something to report (issue 18): an
    idle agent with an empty record has not loaded it; a job that `installs` a package has its
    version reported to `$package`, by the client built then, which keeps working for the next
    report."""
    write_handler(tmp_path / "handlers", "hello", "#!/bin/sh\necho hello\n")
    config = agent_config(tmp_path, mosquitto.port, thing=THING)
    path = tmp_path / "config.yaml"
    path.write_text(config_yaml(config))
    env, dump = hooked_env(tmp_path)
    agent = AgentProcess(config_path=path, workdir=tmp_path, env=env)
    shadows = emulator.service.shadows

    def reported() -> Any:
        document = shadows.document(THING, "$package")
        return None if document is None else document["state"].get("reported")

    def reports(installs: dict[str, Any]) -> Callable[[], bool]:
        return lambda: reported() == installs

    try:
        agent.start()
        await agent.wait_ready()
        await agent.wait_message("STATUS=idle")
        assert "jobs_agent.shadow.client" not in await loaded_modules(agent, dump)
        for job_id, version in (("installs-1", "2.1.0"), ("installs-2", "2.2.0")):
            installs = {"firmware": {"version": version}}
            document = {"operation": "hello", "installs": installs}
            emulator.service.create_job(job_id, [THING], document)
            execution = await wait_terminal(emulator, job_id, THING)
            assert str(execution.status) == "SUCCEEDED", execution.status_details
            await wait_until(reports(installs), 20, f"$package saying {version}")
        assert "jobs_agent.shadow.client" in await loaded_modules(agent, dump)
        agent.signal(signal.SIGTERM)
        assert await agent.wait_exit() == 0
    finally:
        agent.kill()


async def test_unusable_signing_keys_still_stop_the_start(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """The dispatcher is built at the first job, except when signatures are required: then a
    `jobs.trusted_keys` that cannot be used stops the start before READY=1, as it always did."""
    config = agent_config(tmp_path, mosquitto.port, thing=THING)
    (tmp_path / "handlers").mkdir()
    key = tmp_path / "signer.pem"
    key.write_text("not a public key\n")
    signing = f"jobs:\n  require_signature: true\n  trusted_keys: [{key}]\n"
    path = tmp_path / "config.yaml"
    path.write_text(config_yaml(config).replace("jobs:\n", signing))
    agent = AgentProcess(config_path=path, workdir=tmp_path)
    try:
        agent.start()
        code = await agent.wait_exit()
        assert code == 1, agent.log_text()
        assert "cannot start" in agent.log_text()
        assert f"jobs.trusted_keys: {key}" in agent.log_text()
        assert not any(m.startswith("READY=1") for m in agent.messages)
    finally:
        agent.kill()
