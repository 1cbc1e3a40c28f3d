"""`jobs-agent exec` and `jobs-agent sign` as a user runs them (a real subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

# The full CLI imports every command module; this drives only ours, through the same
# register()/func contract agent.cli uses.
DRIVER = """
import argparse, sys
from jobs_agent.cli import UsageError
from jobs_agent.commands import exec_, sign
parser = argparse.ArgumentParser(prog="jobs-agent")
sub = parser.add_subparsers()
exec_.register(sub)
sign.register(sub)
args = parser.parse_args(sys.argv[1:])
try:
    sys.exit(args.func(args))
except UsageError as exc:
    print(f"jobs-agent: {exc}", file=sys.stderr)
    sys.exit(2)
"""


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", DRIVER, *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )


def exec_here(tmp_path: Path, document: Path, *options: str) -> subprocess.CompletedProcess[str]:
    """`jobs-agent exec DOCUMENT` with handlers searched in `tmp_path`, from it."""
    return cli("exec", str(document), "--handler-dir", str(tmp_path), *options, cwd=tmp_path)


def write_doc(tmp_path: Path, marker: Path) -> Path:
    doc = tmp_path / "doc.json"
    doc.write_text(
        json.dumps(
            {
                "version": "1.0",
                "includeStdOut": "true",
                "steps": [
                    {
                        "action": {
                            "name": "Touch",
                            "type": "runCommand",
                            "input": {"command": f"touch,{marker}"},
                        }
                    },
                    {
                        "action": {
                            "name": "Say",
                            "type": "runCommand",
                            "input": {"command": "echo,line one\\, still one"},
                        }
                    },
                ],
            }
        )
    )
    return doc


def test_dry_run_prints_the_plan_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    result = exec_here(tmp_path, write_doc(tmp_path, marker), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert f"step 1: 'Touch' (runCommand): /usr/bin/touch {marker} as root" in result.stdout
    assert "timeout 3600 s" in result.stdout
    assert not marker.exists()


def test_exec_runs_and_prints_status_details(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    result = exec_here(tmp_path, write_doc(tmp_path, marker), "--state-dir", str(tmp_path / "st"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert marker.exists()
    assert '"stdout": "line one, still one"' in result.stdout
    assert result.stdout.rstrip().splitlines()[-2] == "status: SUCCEEDED"
    failing = tmp_path / "fail.json"
    failing.write_text(json.dumps({"operation": "false"}))
    failed = exec_here(tmp_path, failing)
    assert failed.returncode == 1
    assert 'step 1 \\"false\\": exited with code 1' in failed.stdout or (
        '"reason": "step 1 \\"false\\": exited with code 1"' in failed.stdout
    )
    assert "status: FAILED" in failed.stdout


def test_sign_then_exec_with_require_signature(tmp_path: Path) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (tmp_path / "pub.pem").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    (tmp_path / "config.yaml").write_text(
        "connection: {transport: local}\n"
        f"jobs:\n  handler_dir: {tmp_path}\n  require_signature: true\n"
        f"  trusted_keys: [{tmp_path / 'pub.pem'}]\nstate_dir: {tmp_path / 'st'}\n"
    )
    doc = write_doc(tmp_path, tmp_path / "marker")
    signed = tmp_path / "signed.json"
    assert (
        cli(
            "sign", "--key", str(tmp_path / "key.pem"), str(doc), "-o", str(signed), cwd=tmp_path
        ).returncode
        == 0
    )
    config = str(tmp_path / "config.yaml")
    unsigned = cli("exec", str(doc), "--config", config, "--dry-run", cwd=tmp_path)
    assert unsigned.returncode == 3  # REJECTED has its own exit status (issue 13.13)
    assert "would be REJECTED: the document is not signed" in unsigned.stdout
    ok = cli("exec", str(signed), "--config", config, cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert (tmp_path / "marker").exists()


def test_exec_in_the_daemons_state_dir_leaves_the_daemons_job_directories_alone(
    tmp_path: Path,
) -> None:
    """An operator tries a document with the daemon's own `--state-dir`: the daemon keeps its
    jobs in `jobs/<namespace>/<jobId>/` (`default` for none), and exec's `--job-id default`
    used `jobs/default/` as its job directory and removed it at the end, with every running
    or deferred job's state in it (seen on main before the fix)."""
    state_dir = tmp_path / "st"
    kept = state_dir / "jobs" / "default" / "running-job" / "state" / "checkpoint"
    kept.parent.mkdir(parents=True)
    kept.write_text("the daemon's")
    marker = tmp_path / "marker"
    result = exec_here(
        tmp_path, write_doc(tmp_path, marker), "--state-dir", str(state_dir), "--job-id", "default"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert marker.exists()
    assert kept.read_text() == "the daemon's"
    assert not (state_dir / "exec" / "default").exists()  # exec's own, removed at its end
