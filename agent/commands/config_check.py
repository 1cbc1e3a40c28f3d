"""`jobs-agent config check`: validate a configuration file without starting anything."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from jobs_agent.cli import EXIT_USAGE
from jobs_agent.commands.common import add_config_argument, load_config_or_exit
from jobs_agent.redact import redact_mapping


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "config",
        help="inspect the configuration",
        description="Inspect the configuration.",
    )
    actions = parser.add_subparsers(dest="config_command", metavar="ACTION")
    actions.required = True
    check = actions.add_parser(
        "check",
        help="validate the configuration file and print the effective settings",
        description="Validate the configuration (file plus JOBS_AGENT_* environment overrides) "
        "and what it points at on this device: certificate, key and CA files, the handler "
        "directory and its rights, plugins. Warn about a broker reached without TLS or credentials "
        "while documents need no signature. Exit 0 when valid, 2 naming the key (and the "
        "line or file) when not.",
    )
    add_config_argument(check)
    check.add_argument("--json", action="store_true", help="print the effective settings as JSON")
    check.set_defaults(func=_check)


def _plain(value: Any) -> Any:
    from jobs_agent.schedule.windows import Windows

    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Windows):
        return value.to_config()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _check(args: argparse.Namespace) -> int:
    from jobs_agent.config_checks import check_environment

    config = load_config_or_exit(args)
    findings = check_environment(config)
    for warning in findings.warnings:
        print(f"WARNING: {warning}", file=sys.stderr)
    if findings.errors:
        for error in findings.errors:
            print(f"jobs-agent: {error}", file=sys.stderr)
        print(
            f"configuration INVALID on this device: {len(findings.errors)} problem(s)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    # The handler's defaults when the file has no `system_update:` section (not built at load).
    shown = replace(config, system_update=config.system_update_settings())
    effective = redact_mapping(_plain(asdict(shown)))
    if args.json:
        print(json.dumps(effective, indent=2, sort_keys=True))
    else:
        print(
            f"configuration OK: thing {config.thing_name}, transport {config.connection.transport}"
            + (f" ({len(findings.warnings)} warning(s) above)" if findings.warnings else "")
        )
        for section, values in effective.items():
            if isinstance(values, dict):
                for key, value in values.items():
                    print(f"  {section}.{key} = {json.dumps(value)}")
            else:
                print(f"  {section} = {json.dumps(values)}")
    return 0
