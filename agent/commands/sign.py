"""`jobs-agent sign --key KEY.pem DOC.json [claims] [-o OUT]`: sign a job document.

The signature goes into the document (`jobsAgentSignature`) and covers all of it as created,
with the places of presigned-URL placeholders and the S3 object each names, and the claims that
bind it: `--thing` (repeatable) or `--thing-pattern`, `--job-id`, `--not-after` (see
agent/dispatch/signing.py). Sign the document exactly as it will be given to CreateJob: any
later edit invalidates it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from jobs_agent.vocabulary import MAX_DOCUMENT_BYTES


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "sign",
        help="sign a job document with an Ed25519 or ECDSA P-256 private key",
        description="Add a jobsAgentSignature to a job document, for devices configured with "
        "jobs.require_signature and the matching public key in jobs.trusted_keys.",
    )
    parser.add_argument("document", type=Path, metavar="DOC.json", help="the job document")
    parser.add_argument(
        "--key", "-k", type=Path, required=True, metavar="KEY.pem", help="PEM private key"
    )
    parser.add_argument(
        "-o", "--output", type=Path, default=None, metavar="OUT", help="default: stdout"
    )
    claims = parser.add_argument_group(
        "claims", "bind the signature, so that a signed document cannot be replayed elsewhere"
    )
    claims.add_argument(
        "--thing",
        action="append",
        default=[],
        metavar="NAME",
        help="only this thing may run it (repeat for several)",
    )
    claims.add_argument(
        "--thing-pattern",
        metavar="PATTERN",
        help='only things whose name matches this shell-style pattern (e.g. "gw-*")',
    )
    claims.add_argument("--job-id", metavar="ID", help="only as the job with this id")
    claims.add_argument(
        "--not-after",
        metavar="TIME",
        help="only executions received by then: an ISO 8601 time (2026-12-31T23:59:59Z)"
        " or a delay from now (30m, 12h, 7d)",
    )
    parser.set_defaults(func=_sign)


def _not_after(text: str) -> str:
    import datetime
    import re

    from jobs_agent.dispatch.signing import parse_time

    delay = re.fullmatch(r"\+?(\d+)([smhd])", text.strip())
    if delay is not None:
        seconds = int(delay.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[delay.group(2)]
        moment = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=seconds)
        return moment.replace(microsecond=0).isoformat().replace("+00:00", "Z")
    parse_time(text)
    return text


def _claims(args: argparse.Namespace) -> dict[str, Any]:
    claims: dict[str, Any] = {}
    if args.thing:
        claims["thingNames"] = list(args.thing)
    if args.thing_pattern:
        claims["thingNamePattern"] = args.thing_pattern
    if args.job_id:
        claims["jobId"] = args.job_id
    if args.not_after:
        claims["notAfter"] = _not_after(args.not_after)
    return claims


def _sign(args: argparse.Namespace) -> int:
    from jobs_agent.cli import UsageError
    from jobs_agent.dispatch.signing import SigningKeyError, load_private_key, sign_document

    try:
        document = json.loads(args.document.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"{args.document}: cannot read: {exc.strerror}") from None
    except ValueError as exc:
        raise UsageError(f"{args.document}: not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise UsageError(f"{args.document}: a job document is a JSON object")
    try:
        key = load_private_key(args.key)
    except SigningKeyError as exc:
        raise UsageError(str(exc)) from None
    try:
        signed = sign_document(document, key, _claims(args))
    except ValueError as exc:
        raise UsageError(f"{args.document}: cannot sign: {exc}") from None
    text = json.dumps(signed, indent=2, ensure_ascii=False) + "\n"
    size = len(json.dumps(signed, separators=(",", ":"), ensure_ascii=False).encode())
    if size > MAX_DOCUMENT_BYTES:
        print(
            f"jobs-agent: warning: the signed document is {size} bytes, over the 32 KiB limit",
            file=sys.stderr,
        )
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text, encoding="utf-8")
    return 0
