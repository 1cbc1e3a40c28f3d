"""Local consent: the agent's consent socket and real `jobs-agent consent` processes, run as root
and as real throwaway users (allowed by name, by a supplementary group, or refused), with the
decisions on disk before they are acknowledged."""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from jobs_agent.consent.decisions import DecisionStore
from jobs_agent.consent.document import ConsentDocumentError, consent_requirement
from jobs_agent.consent.peer import Allowlist
from jobs_agent.consent.server import ConsentDesk, ConsentServer
from jobs_agent.consent.settings import ConsentSettings, ConsentSettingsError
from jobs_agent.securefs import UntrustedPath
from jobs_agent.vocabulary import ExecutionRef
from tests.helpers.users import SYSTEM_PYTHON, public_dir, require_root, run_as, throwaway_user

CLI = str(Path(sys.executable).with_name("jobs-agent"))
SITE_PACKAGES = next(p for p in sys.path if p.endswith("site-packages") and ".venv" in p)
AS_OTHER_USER = (
    "import site, sys\n"
    f"site.addsitedir({SITE_PACKAGES!r})\n"
    "from jobs_agent.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)
"""`jobs-agent` for an account that cannot run the test's interpreter (a virtual environment
made from an interpreter under root's home): the same code, the `jobs_agent.cli` entry point
and the environment's packages, through the system's Python of the same version."""


def cli_argv(user: pwd.struct_passwd | None) -> list[str]:
    if user is None or _runs_as(user, [CLI, "--version"]):
        return [CLI]
    other = [SYSTEM_PYTHON, "-c", AS_OTHER_USER]
    if _runs_as(user, [*other, "--version"]):
        return other
    pytest.skip("neither the test's interpreter nor the system's can run the agent as another user")


def _runs_as(user: pwd.struct_passwd, argv: list[str]) -> bool:
    try:
        result = subprocess.run(
            argv,
            user=user.pw_uid,
            group=user.pw_gid,
            extra_groups=[],
            capture_output=True,
            timeout=60,
            cwd="/",
            check=False,
        )
    except PermissionError:
        return False
    return result.returncode == 0


KEY = ExecutionRef(None, "fw-2-1", 3)


@dataclass
class Result:
    code: int
    out: str
    err: str


async def run_cli(
    socket_path: Path,
    *args: str,
    user: pwd.struct_passwd | None = None,
    extra_groups: list[int] | None = None,
) -> Result:
    """A real `jobs-agent consent ARGS --socket S` process, as root or as `user` (its uid, gid
    and exactly `extra_groups` as supplementary groups)."""
    identity = {}
    if user is not None:
        identity = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": extra_groups or []}
    process = await asyncio.create_subprocess_exec(
        *cli_argv(user),
        "consent",
        *args,
        "--socket",
        str(socket_path),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd="/",
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        **identity,  # type: ignore[arg-type]
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return Result(process.returncode, out.decode(), err.decode())


@dataclass
class Setup:
    desk: ConsentDesk
    server: ConsentServer
    socket: Path
    store: DecisionStore

    async def cli(
        self,
        *args: str,
        user: pwd.struct_passwd | None = None,
        extra_groups: list[int] | None = None,
    ) -> Result:
        return await run_cli(self.socket, *args, user=user, extra_groups=extra_groups)


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, allow: Allowlist) -> AsyncIterator[Setup]:
    run = public_dir("jobs-agent-consent-")
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    store = DecisionStore(state / "consent")
    desk = ConsentDesk(store)
    server = ConsentServer(desk, run / "consent.sock", allow)
    await server.start()
    try:
        yield Setup(desk, server, run / "consent.sock", store)
    finally:
        await server.close()
        shutil.rmtree(run, ignore_errors=True)


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    async with serving(tmp_path, Allowlist()) as ready:
        yield ready


async def test_accept_is_on_disk_before_it_is_acknowledged(setup: Setup) -> None:
    assert setup.desk.request(KEY, "Install firmware 2.1? The device restarts.") is None
    listed = await setup.cli("--list")
    assert listed.code == 0, listed.err
    assert "fw-2-1 (execution 3, waiting since" in listed.out
    assert "Install firmware 2.1? The device restarts." in listed.out
    waiter = asyncio.create_task(setup.desk.wait(KEY))
    accepted = await setup.cli("fw-2-1")
    assert accepted.code == 0, accepted.err
    assert accepted.out.strip() == "job fw-2-1 (execution 3): accepted by root"
    decision = await asyncio.wait_for(waiter, 5)
    assert decision.accepted and decision.decided_by == "root" and decision.uid == 0
    assert DecisionStore(setup.store.directory).load(KEY) == decision  # synced to disk
    assert (await setup.cli("--list")).out.strip() == "no job is waiting for consent"


async def test_a_decision_that_cannot_be_recorded_is_not_taken(setup: Setup) -> None:
    """The decisions directory is gone (a full or broken disk looks the same to the agent):
    the answer is NotRecorded, and the job still waits."""
    setup.desk.request(KEY, "")
    shutil.rmtree(setup.store.directory)
    failed = await setup.cli("fw-2-1")
    assert failed.code == 1
    assert "could not be recorded" in failed.err and "(NotRecorded)" in failed.err
    assert [w.key for w in setup.desk.waiting()] == [KEY]
    setup.store.directory.mkdir(mode=0o700)
    assert (await setup.cli("fw-2-1")).code == 0
    assert setup.store.load(KEY) is not None


async def test_reject_reports_the_persons_reason_on_one_line(setup: Setup) -> None:
    setup.desk.request(KEY, "")
    rejected = await setup.cli("fw-2-1", "--reject", "the line is running\nuntil 18:00")
    assert rejected.code == 0, rejected.err
    decision = await asyncio.wait_for(setup.desk.wait(KEY), 5)
    assert not decision.accepted
    assert decision.reason == "the line is running\\nuntil 18:00"
    assert "rejected by root: the line is running\\nuntil 18:00" in rejected.out
    usage = await setup.cli("fw-2-1", "--reject", "  ")
    assert usage.code == 2 and "--reject needs a reason" in usage.err


async def test_asking_twice_is_harmless_and_a_contradiction_is_refused(setup: Setup) -> None:
    setup.desk.request(KEY, "")
    assert (await setup.cli("fw-2-1")).code == 0
    again = await setup.cli("fw-2-1", "--json")
    assert again.code == 0
    answer = json.loads(again.out)
    assert answer["repeated"] is True and answer["decision"] == "accepted"
    contrary = await setup.cli("fw-2-1", "--reject", "changed my mind")
    assert contrary.code == 1
    assert "job fw-2-1 was already accepted by root at" in contrary.err
    assert "(AlreadyDecided)" in contrary.err
    decision = setup.store.load(KEY)
    assert decision is not None and decision.accepted


async def test_a_job_the_agent_is_not_waiting_for(setup: Setup) -> None:
    setup.desk.request(KEY, "")
    other = await setup.cli("other-job")
    assert other.code == 1
    assert (
        "the agent is not waiting for consent to job other-job (waiting for: fw-2-1)" in other.err
    )
    assert "(NotWaiting)" in other.err
    namespaced = await setup.cli("fw-2-1", "--namespace", "fleet")
    assert namespaced.code == 1 and "in namespace fleet" in namespaced.err


async def test_a_decision_survives_a_restart_until_the_job_is_settled(tmp_path: Path) -> None:
    """Decided while the job waited; the agent restarts before acting on it: the job asks
    again and finds the answer. Once settled (`forget`), asking again is NotWaiting."""
    async with serving(tmp_path, Allowlist()) as first:
        first.desk.request(KEY, "")
        assert (await first.cli("fw-2-1", "--reject", "not today")).code == 0
    store = DecisionStore(tmp_path / "state" / "consent")
    desk = ConsentDesk(store)
    recorded = desk.request(KEY, "")
    assert recorded is not None and not recorded.accepted and recorded.reason == "not today"
    desk.forget(KEY)
    assert store.load(KEY) is None


async def test_no_agent_listening(tmp_path: Path) -> None:
    run = public_dir("jobs-agent-consent-")
    try:
        result = await run_cli(run / "consent.sock", "--list")
        assert result.code == 1
        assert "the agent is not listening on" in result.err
    finally:
        shutil.rmtree(run, ignore_errors=True)


def test_usage_errors() -> None:
    for args, message in (
        ([], "name a JOB to decide on, or --list"),
        (["job", "--list"], "name a JOB to decide on, or --list"),
        (["--list", "--reject", "x"], "--list takes no --reject"),
    ):
        result = subprocess.run(
            [CLI, "consent", *args], capture_output=True, text=True, timeout=60, check=False
        )
        assert result.returncode == 2 and message in result.stderr


# -- the raw protocol ---------------------------------------------------------------------------
def _talk(path: Path, *lines: bytes) -> list[dict[str, object]]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        for line in lines:
            sock.sendall(line)
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return [json.loads(line) for line in data.splitlines()]


async def test_protocol_answers_every_line_and_refuses_garbage(setup: Setup) -> None:
    setup.desk.request(KEY, "Prompt with \x1b[31mcolour\x1b[0m")
    answers = await asyncio.to_thread(
        _talk,
        setup.socket,
        b'{"op": "list"}\n',
        b"not json\n",
        b'{"op": "delete", "jobId": "fw-2-1"}\n',
        b'{"op": "accept", "jobId": "../../etc"}\n',
        b'{"op": "reject", "jobId": "fw-2-1"}\n',
        b'{"op": "accept", "jobId": "fw-2-1"}\n',
    )
    assert answers[0]["ok"] is True
    (waiting,) = answers[0]["waiting"]  # type: ignore[misc]
    assert waiting["prompt"] == "Prompt with [31mcolour[0m"  # no escape reaches a terminal
    assert [a.get("error") for a in answers[1:5]] == ["InvalidRequest"] * 4
    assert answers[5]["ok"] is True and answers[5]["decision"] == "accepted"
    (too_long,) = await asyncio.to_thread(_talk, setup.socket, b"x" * (17 * 1024) + b"\n")
    assert too_long["error"] == "InvalidRequest"


# -- who may answer: real users ------------------------------------------------------------------
@contextlib.contextmanager
def throwaway_group(member: pwd.struct_passwd) -> Iterator[grp.struct_group]:
    name = f"jcg{secrets.token_hex(4)}"
    subprocess.run(["groupadd", name], check=True, capture_output=True)
    try:
        subprocess.run(["usermod", "-a", "-G", name, member.pw_name], check=True)
        yield grp.getgrnam(name)
    finally:
        subprocess.run(["groupdel", name], check=False, capture_output=True)


async def test_only_root_and_the_allowed_may_answer(tmp_path: Path) -> None:
    require_root()
    with (
        throwaway_user("jcn") as stranger,
        throwaway_user("jco") as operator,
        throwaway_user("jcm") as member,
        throwaway_group(member) as group,
    ):
        cli_argv(stranger)  # skips where no interpreter can run the agent as another user
        allow = Allowlist(users=(operator.pw_name,), groups=(group.gr_name,))
        async with serving(tmp_path, allow) as setup:
            setup.desk.request(KEY, "")
            refused = await setup.cli("--list", user=stranger)
            assert refused.code == 1
            assert f"user {stranger.pw_name} (uid {stranger.pw_uid}" in refused.err
            assert "may not answer consent requests" in refused.err
            assert "(NotAllowed)" in refused.err and "fw-2-1" not in refused.err
            assert (await setup.cli("fw-2-1", user=stranger)).code == 1
            assert setup.store.load(KEY) is None

            # in the group by the user database, but not holding it: the kernel's word counts
            assert (await setup.cli("--list", user=member)).code == 1
            holding = await setup.cli("--list", user=member, extra_groups=[group.gr_gid])
            assert holding.code == 0, holding.err
            assert "fw-2-1" in holding.out

            accepted = await setup.cli("fw-2-1", user=operator)
            assert accepted.code == 0, accepted.err
            decision = await asyncio.wait_for(setup.desk.wait(KEY), 5)
            assert decision.decided_by == operator.pw_name and decision.uid == operator.pw_uid


async def test_the_cli_refuses_a_socket_someone_could_have_planted(tmp_path: Path) -> None:
    """A local user serves a look-alike socket in a directory everyone can write to (/tmp's
    kind): an operator pointed at it learns it is not the agent's, and tells it nothing."""
    require_root()
    shared = Path(public_dir("jobs-agent-shared-"))
    shared.chmod(0o1777)
    planted = shared / "consent.sock"
    try:
        with throwaway_user("jcp") as user:
            code = (
                "import socket, sys\n"
                "s = socket.socket(socket.AF_UNIX)\n"
                "s.bind(sys.argv[1]); s.listen(1)\n"
                "print('ready', flush=True)\n"
                "c, _ = s.accept(); c.recv(1000)\n"
                'c.sendall(b\'{"ok": true, "waiting": []}\\n\')\n'
            )
            impostor = run_as(user, code, str(planted))
            try:
                assert impostor.stdout is not None
                assert impostor.stdout.readline().strip() == b"ready"
                result = await run_cli(planted, "fw-2-1")
                assert result.code == 1
                assert "can be changed by others (mode 1777): not the agent's socket" in result.err
            finally:
                impostor.kill()
                impostor.wait(10)
    finally:
        shutil.rmtree(shared, ignore_errors=True)


async def test_the_server_will_not_listen_where_others_can_replace_it(tmp_path: Path) -> None:
    open_dir = Path(public_dir("jobs-agent-open-"))
    open_dir.chmod(0o777)
    desk = ConsentDesk(DecisionStore(tmp_path / "consent"))
    try:
        with pytest.raises(UntrustedPath, match="is writable by others"):
            await ConsentServer(desk, open_dir / "consent.sock", Allowlist()).start()
        private = Path(public_dir("jobs-agent-run-"))
        (private / "consent.sock").write_text("not a socket")
        with pytest.raises(UntrustedPath, match="exists and is not a socket"):
            await ConsentServer(desk, private / "consent.sock", Allowlist()).start()
        shutil.rmtree(private)
    finally:
        shutil.rmtree(open_dir, ignore_errors=True)


# -- the document field and the settings --------------------------------------------------------
def test_the_document_field() -> None:
    assert consent_requirement({"operation": "x"}) is None
    assert consent_requirement({"consent": True}) == consent_requirement({"consent": {}})
    required = consent_requirement({"consent": {"prompt": "Reboot now?\nIt takes 2 min."}})
    assert required is not None and required.prompt == "Reboot now?\\nIt takes 2 min."
    for bad, message in (
        ({"consent": "yes"}, 'consent: expected true or {"prompt": "..."}'),
        ({"consent": {"promt": "x"}}, "consent.promt: unknown key"),
        ({"consent": {"prompt": "x" * 1001}}, "consent.prompt: expected a string of at most"),
    ):
        with pytest.raises(ConsentDocumentError) as caught:
            consent_requirement(bad)
        assert message in str(caught.value)


def test_the_settings() -> None:
    settings = ConsentSettings.from_mapping(
        {"socket": "/run/x/consent.sock", "allowed_users": ["op"], "allowed_groups": ["ui"]}
    )
    assert settings.allowlist == Allowlist(("op",), ("ui",))
    assert str(settings.socket) == "/run/x/consent.sock"
    for bad, message in (
        ({"socket": "relative"}, "consent.socket: expected an absolute path"),
        ({"allowed_users": "op"}, "consent.allowed_users: expected a list"),
        ({"allowed_user": ["op"]}, "consent.allowed_user: unknown key"),
    ):
        with pytest.raises(ConsentSettingsError, match=message):
            ConsentSettings.from_mapping(bad)
