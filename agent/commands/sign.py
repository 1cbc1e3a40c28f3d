"""`jobs-agent sign --key KEY.pem DOC.json [-o OUT]`: sign a job document for require_signature.

The signature goes into the document (`jobsAgentSignature`) and covers everything except the
presigned-URL placeholders AWS rewrites at delivery (see agent/dispatch/signing.py). Sign the
document exactly as it will be given to CreateJob: any later edit invalidates it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

MAX_DOCUMENT_BYTES = 32 * 1024


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
    parser.set_defaults(func=_sign)


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
    signed = sign_document(document, key)
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
