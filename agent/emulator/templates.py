"""Job templates: the AWS managed templates and the account's own (CreateJobTemplate).

Managed templates are public: their documents and parameters are those of the developer guide's
"Managed template remote actions and job documents" and of `describe-managed-job-template`
(docs/emulator.md names the pages). A job created from one gets the template's document with
every `${aws:iot:parameter:KEY}` replaced by `documentParameters[KEY]`, as the service renders
it before any device sees it; a required parameter missing, an unknown key or a value that does
not match the parameter's regex is InvalidRequestException. An optional parameter not given
becomes "" (or keeps its placeholder under the other reading, see `Readings`).

Custom templates carry a document (or documentSource) and the job configurations; CreateJob
with their ARN copies them, and the request's own configurations win. `documentParameters`
belong to managed templates only ("can't be used with custom job templates").
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from jobs_agent.emulator.configs import (
    AbortConfig,
    MaintenanceWindow,
    PresignedUrlConfig,
    RolloutConfig,
    TimeoutConfig,
    invalid,
)
from jobs_agent.emulator.model import RetryCriterion

PARAMETER = re.compile(r"\$\{aws:iot:parameter:([a-zA-Z0-9_-]+)\}")
_MANAGED_ARN = re.compile(r"arn:aws[a-z-]*:iot:[a-z0-9-]*::jobtemplate/([A-Za-z0-9-]+)(?::(\S+))?")
_CUSTOM_ARN = re.compile(r"arn:aws[a-z-]*:iot:[a-z0-9-]*:\d*:jobtemplate/([a-zA-Z0-9_-]{1,64})")
MANAGED_VERSION = "1.0"


@dataclass(frozen=True, slots=True)
class DocumentParameter:
    key: str
    description: str
    regex: str
    example: str
    optional: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "description": self.description,
            "regex": self.regex,
            "example": self.example,
            "optional": self.optional,
        }


_RUN_AS_USER = DocumentParameter(
    "runAsUser",
    "Execute handler as another user. If not specified, then handler is executed as the same "
    "user as device client.",
    "(.){0,256}",
    "user1",
    True,
)
_PATH_TO_HANDLER = DocumentParameter(
    "pathToHandler",
    "Path to handler on the device. If not specified, then device client will use the current "
    "working directory.",
    "(.){0,4096}",
    "/path/to/handler/script",
    True,
)


def _handler_document(name: str, handler: str, args: list[str]) -> dict[str, Any]:
    step_input: dict[str, Any] = {"handler": handler}
    if args:
        step_input["args"] = args
    step_input["path"] = "${aws:iot:parameter:pathToHandler}"
    return {
        "version": "1.0",
        "steps": [
            {
                "action": {
                    "name": name,
                    "type": "runHandler",
                    "input": step_input,
                    "runAsUser": "${aws:iot:parameter:runAsUser}",
                }
            }
        ],
    }


@dataclass(frozen=True, slots=True)
class ManagedTemplate:
    name: str
    description: str
    document: dict[str, Any]
    parameters: tuple[DocumentParameter, ...]
    version: str = MANAGED_VERSION
    environments: tuple[str, ...] = ("LINUX",)

    @property
    def document_text(self) -> str:
        return json.dumps(self.document, separators=(",", ":"))

    def arn(self, region: str) -> str:
        return f"arn:aws:iot:{region}::jobtemplate/{self.name}:{self.version}"


def _list_parameter(key: str, what: str, example: str) -> DocumentParameter:
    return DocumentParameter(key, f"Space separated list of {what}.", "(.)+(.)*", example, False)


def _managed() -> dict[str, ManagedTemplate]:
    templates = [
        *_file_and_command_templates(),
        _command_template(),
        *_package_and_service_templates(),
    ]
    return {t.name: t for t in sorted(templates, key=lambda t: t.name)}


def _file_and_command_templates() -> list[ManagedTemplate]:
    return [
        ManagedTemplate(
            "AWS-Download-File",
            "A managed job template for downloading a file.",
            _handler_document(
                "Download-File",
                "download-file.sh",
                ["${aws:iot:parameter:downloadUrl}", "${aws:iot:parameter:filePath}"],
            ),
            (
                DocumentParameter(
                    "downloadUrl",
                    "URL of file to download.",
                    "(.*?)",
                    "http://www.example.com/index.html",
                    False,
                ),
                DocumentParameter(
                    "filePath",
                    "Path on the device where downloaded file is written.",
                    "(.*?)",
                    "/path/to/file",
                    False,
                ),
                _RUN_AS_USER,
                _PATH_TO_HANDLER,
            ),
        ),
        ManagedTemplate(
            "AWS-Reboot",
            "A managed job template for rebooting the device.",
            _handler_document("Reboot", "reboot.sh", []),
            (_RUN_AS_USER, _PATH_TO_HANDLER),
        ),
    ]


def _command_template() -> ManagedTemplate:
    return ManagedTemplate(
        "AWS-Run-Command",
        "A managed job template for running a command.",
        {
            "version": "1.0",
            "steps": [
                {
                    "action": {
                        "name": "Run-Command",
                        "type": "runCommand",
                        "input": {"command": "${aws:iot:parameter:command}"},
                        "runAsUser": "${aws:iot:parameter:runAsUser}",
                    }
                }
            ],
        },
        (
            DocumentParameter(
                "command",
                "Comma separated command to run; escape a comma in the command with \\,.",
                "(.)+",
                "echo,hello",
                False,
            ),
            _RUN_AS_USER,
        ),
    )


def _package_and_service_templates() -> list[ManagedTemplate]:
    templates = []
    for verb, noun, handler, what in (
        ("Install", "Application", "install-packages.sh", "packages"),
        ("Remove", "Application", "remove-packages.sh", "packages"),
        ("Start", "Application", "start-services.sh", "services"),
        ("Stop", "Application", "stop-services.sh", "services"),
        ("Restart", "Application", "restart-services.sh", "services"),
    ):
        action = f"{verb}-{noun}"
        doing = {
            "Install": "installing one or more applications",
            "Remove": "uninstalling one or more applications",
            "Start": "starting one or more system services",
            "Stop": "stopping one or more system services",
            "Restart": "restarting one or more system services",
        }[verb]
        templates.append(
            ManagedTemplate(
                f"AWS-{action}",
                f"A managed job template for {doing}.",
                _handler_document(action, handler, [f"${{aws:iot:parameter:{what}}}"]),
                (
                    _list_parameter(what, what, "nginx" if what == "services" else "lftp"),
                    _RUN_AS_USER,
                    _PATH_TO_HANDLER,
                ),
            )
        )
    return templates


MANAGED_TEMPLATES: Mapping[str, ManagedTemplate] = _managed()


def managed_template(name: str, version: str | None = None) -> ManagedTemplate | None:
    template = MANAGED_TEMPLATES.get(name)
    if template is None or (version is not None and version != template.version):
        return None
    return template


def parse_template_arn(arn: str) -> tuple[str, str, str | None]:
    """("managed", name, version) or ("custom", id, None); InvalidRequestException otherwise."""
    match = _MANAGED_ARN.fullmatch(arn)
    if match is not None:
        return "managed", match.group(1), match.group(2)
    match = _CUSTOM_ARN.fullmatch(arn)
    if match is not None:
        return "custom", match.group(1), None
    raise invalid(f"jobTemplateArn {arn!r} is not a job template ARN")


def render(
    template: ManagedTemplate, parameters: Mapping[str, Any], optional_empty: bool = True
) -> str:
    """The document of a job created from `template` with `documentParameters`."""
    known = {p.key: p for p in template.parameters}
    for key, value in parameters.items():
        parameter = known.get(key)
        if parameter is None:
            raise invalid(f"{template.name} has no parameter {key!r}; it takes {', '.join(known)}")
        if not isinstance(value, str) or re.fullmatch(parameter.regex, value) is None:
            raise invalid(f"documentParameters.{key} does not match {parameter.regex}")
    missing = [p.key for p in template.parameters if not p.optional and p.key not in parameters]
    if missing:
        raise invalid(f"{template.name} requires documentParameters {', '.join(missing)}")

    def substitute(text: str) -> str:
        def one(match: re.Match[str]) -> str:
            key = match.group(1)
            if key in parameters:
                return str(parameters[key])
            return "" if optional_empty else match.group(0)

        return PARAMETER.sub(one, text)

    def walk(value: Any) -> Any:
        if isinstance(value, str):
            return substitute(value)
        if isinstance(value, list):
            return [walk(v) for v in value]
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        return value

    return json.dumps(walk(template.document), separators=(",", ":"))


@dataclass(slots=True)
class JobTemplate:
    """A template of the account (CreateJobTemplate)."""

    template_id: str
    description: str
    document_text: str | None
    document_source: str | None
    created_at: float
    presigned_url_config: PresignedUrlConfig | None = None
    rollout_config: RolloutConfig | None = None
    abort_config: AbortConfig | None = None
    timeout_config: TimeoutConfig | None = None
    retry_criteria: tuple[RetryCriterion, ...] = ()
    maintenance_windows: tuple[MaintenanceWindow, ...] = field(default_factory=tuple)
    destination_package_versions: tuple[str, ...] = ()
