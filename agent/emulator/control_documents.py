"""Where a new job's document comes from: inline, an S3 object (`documentSource`), a job template
or an AWS managed template; and the templates themselves.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jobs_agent.emulator.configs import (
    TimeoutConfig,
    invalid,
)
from jobs_agent.emulator.core import ServiceCore, Txn
from jobs_agent.emulator.errors import ControlError, not_found
from jobs_agent.emulator.templates import (
    MANAGED_TEMPLATES,
    JobTemplate,
    ManagedTemplate,
    managed_template,
    parse_template_arn,
    render,
)
from jobs_agent.vocabulary import is_job_id

_S3_URL = (
    re.compile(
        r"https://(?P<bucket>[a-z0-9.-]+)\.s3(?:[.-][a-z0-9-]+)?\.amazonaws\.com/(?P<key>.+)"
    ),
    re.compile(
        r"https://s3(?:[.-][a-z0-9-]+)?\.amazonaws\.com/(?P<bucket>[a-z0-9.-]+)/(?P<key>.+)"
    ),
    re.compile(r"s3://(?P<bucket>[a-z0-9.-]+)/(?P<key>.+)"),
)


class DocumentsControl(ServiceCore):
    @property
    def s3_root(self) -> Path | None:
        """Where S3 objects are read from besides `put_s3_object` (`BUCKET/KEY` below it):
        `jobs-agent sim serve --s3-dir`."""
        return self.s3.root

    @s3_root.setter
    def s3_root(self, value: Path | None) -> None:
        self.s3.root = value

    def s3_object(self, url: str) -> bytes:
        for pattern in _S3_URL:
            match = pattern.fullmatch(url)
            if match is None:
                continue
            bucket, key = match.group("bucket"), match.group("key")
            data = self.s3.get(bucket, key)
            if data is None:
                raise invalid(f"documentSource {url}: no such S3 object (bucket {bucket})")
            return data
        raise invalid(f"documentSource {url!r} is not an S3 object URL")

    def put_s3_object(self, bucket: str, key: str, data: bytes) -> str:
        """Store an object CreateJob's `documentSource` (or a stream) can name; its URL."""
        self.s3.put(bucket, key, data)
        return f"https://{bucket}.s3.amazonaws.com/{key}"

    def _document_from(
        self,
        document: dict[str, Any] | str | None,
        document_source: str | None,
        template: ManagedTemplate | JobTemplate | None,
        parameters: Mapping[str, str] | None,
        max_bytes: int,
    ) -> tuple[dict[str, Any], str, str | None]:
        """(parsed, text, text before substitution) of a new job's document."""
        given = [x for x in (document, document_source) if x is not None]
        if template is not None and given:
            raise invalid("a job from a template takes neither document nor documentSource")
        if template is None and len(given) != 1:
            raise invalid("exactly one of document, documentSource and jobTemplateArn is required")
        if parameters is not None and not isinstance(template, ManagedTemplate):
            raise invalid("documentParameters can only be used with AWS managed templates")
        before: str | None = None
        if isinstance(template, ManagedTemplate):
            before = template.document_text
            text = render(
                template, parameters or {}, self.readings.template_optional_parameters_empty
            )
        elif isinstance(template, JobTemplate):
            if template.document_text is not None:
                text = template.document_text
            else:
                assert template.document_source is not None
                text = self.s3_object(template.document_source).decode("utf-8", "replace")
        elif document_source is not None:
            text = self.s3_object(document_source).decode("utf-8", "replace")
        elif isinstance(document, str):
            text = document
        else:
            text = json.dumps(document, separators=(",", ":"))
        try:
            parsed = json.loads(text)
        except ValueError as exc:
            raise invalid(f"document is not valid JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise invalid("document must be a JSON object")
        if len(text.encode("utf-8")) > max_bytes:
            raise invalid(f"document is larger than {max_bytes} bytes")
        return parsed, text, before

    def _template_for(self, arn: str | None) -> ManagedTemplate | JobTemplate | None:
        if arn is None:
            return None
        kind, name, version = parse_template_arn(arn)
        if kind == "managed":
            found = managed_template(name, version)
            if found is None:
                raise not_found(f"Managed job template {name}{':' + version if version else ''}")
            return found
        template = self._templates.get(name)
        if template is None:
            raise not_found(f"Job template {name}")
        return template

    # -- templates ------------------------------------------------------------------------------
    def create_job_template(self, template: JobTemplate, job_arn: str | None = None) -> JobTemplate:
        """CreateJobTemplate from a document, a documentSource or an existing job (`job_arn`:
        its document and configurations, overridden by those given)."""
        if not is_job_id(template.template_id):
            raise invalid(f"invalid jobTemplateId {template.template_id!r}")
        sources = [x for x in (template.document_text, template.document_source, job_arn) if x]
        if len(sources) != 1:
            raise invalid("exactly one of document, documentSource and jobArn is required")
        with self._lock:
            if template.template_id in self._templates:
                raise ControlError(
                    "ConflictException", f"Job template {template.template_id} already exists"
                )
            if job_arn is not None:
                job = self._job(job_arn.rsplit("/", 1)[-1])
                template.document_text = job.document_text
                template.presigned_url_config = (
                    template.presigned_url_config or job.presigned_url_config()
                )
                template.rollout_config = template.rollout_config or job.rollout
                template.abort_config = template.abort_config or job.abort
                if template.timeout_config is None and job.in_progress_timeout_minutes:
                    template.timeout_config = TimeoutConfig(job.in_progress_timeout_minutes)
                template.retry_criteria = template.retry_criteria or tuple(job.retry_criteria)
            elif template.document_text is not None:
                try:
                    if not isinstance(json.loads(template.document_text), dict):
                        raise ValueError("not an object")
                except ValueError as exc:
                    raise invalid(f"document is not a JSON object: {exc}") from None
            else:
                assert template.document_source is not None
                self.s3_object(template.document_source)
            template.created_at = self.clock.now()
            self._templates[template.template_id] = template
            self._finish(Txn())
            return copy.copy(template)

    def job_template(self, template_id: str) -> JobTemplate:
        with self._lock:
            template = self._templates.get(template_id)
            if template is None:
                raise not_found(f"Job template {template_id}")
            return copy.copy(template)

    def list_job_templates(self) -> list[JobTemplate]:
        with self._lock:
            return [copy.copy(t) for t in self._templates.values()]

    def delete_job_template(self, template_id: str) -> None:
        with self._lock:
            if self._templates.pop(template_id, None) is None:
                raise not_found(f"Job template {template_id}")

    @staticmethod
    def managed_templates(name: str | None = None) -> list[ManagedTemplate]:
        return [t for t in MANAGED_TEMPLATES.values() if name is None or t.name == name]

    @staticmethod
    def managed_template(name: str, version: str | None = None) -> ManagedTemplate:
        template = managed_template(name, version)
        if template is None:
            raise not_found(f"Managed job template {name}")
        return template
