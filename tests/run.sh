#!/usr/bin/env bash
# The one test command (README "Quick start" and .ci/run both call this file).
# On a fresh Debian/Ubuntu machine with Python 3.11 it installs what the tests need (mosquitto,
# strace, RAUC and SWUpdate from the distribution's packages, a virtual environment with the test
# extras), then runs every gate: the whole pytest suite first (on two pytest-xdist workers), then
# ruff check, ruff format --check and mypy --strict.
# A gate that fails does not stop the others: all of them run and the script fails at the end,
# naming each gate that failed. Extra arguments go to pytest.
#
# It never starts, stops or reconfigures a system service: the broker fixtures start their own
# mosquitto processes on free loopback ports, beside any mosquitto the machine runs (stopping a
# gateway's bridged broker would cut its cloud link).
set -uo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

set -e
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
    echo "== installing mosquitto (the package only; its service is left as the system has it)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null
fi

# The system-update tests run the real RAUC and SWUpdate on throwaway devices (tests/fixtures/
# rauc.py, swupdate.py). Install what is missing; the packages must not start their services
# (swupdate's would take /tmp/sockinstctrl; the tests run private instances), so a
# policy-rc.d that denies every start stands in during the install, unless one is already there.
# valgrind: tests/test_benchmark_instructions.py runs the drain's callgrind count.
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]; }
updater_packages=()
for tool_package in rauc:rauc swupdate:swupdate fw_printenv:libubootenv-tool \
    mksquashfs:squashfs-tools cpio:cpio openssl:openssl dbus-daemon:dbus dbus-send:dbus \
    unshare:util-linux setpriv:util-linux strace:strace valgrind:valgrind; do
    if ! have "${tool_package%%:*}"; then updater_packages+=("${tool_package#*:}"); fi
done
if [ ${#updater_packages[@]} -gt 0 ]; then
    echo "== installing ${updater_packages[*]}"
    no_start=/usr/sbin/policy-rc.d
    if [ ! -e "$no_start" ]; then
        printf '#!/bin/sh\n# jobs-agent tests/run.sh: no service starts during its install\nexit 101\n' \
            | as_root tee "$no_start" >/dev/null
        as_root chmod 755 "$no_start"
        trap 'as_root rm -f "$no_start"' EXIT
    fi
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${updater_packages[@]}" >/dev/null
    if [ "$(trap -p EXIT)" ]; then as_root rm -f "$no_start"; trap - EXIT; fi
fi

VENV=${JOBS_AGENT_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
    echo "== creating $VENV"
    python3 -m venv "$VENV"
fi
echo "== installing jobs-agent with its test extras"
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
"$VENV/bin/python" -m pip install -q -e '.[test]'
set +e

failed=()
passed=0
gate() {
    local name=$1
    shift
    echo "== $name"
    if "$@"; then
        passed=$((passed + 1))
    else
        failed+=("$name")
    fi
}

# The folders are installed as jobs_agent and jobs_agent_handlers (pyproject.toml): type-check
# them under those names through a folder of links, as mypy cannot follow setuptools' mapping.
typecheck=build/typecheck
mkdir -p "$typecheck"
ln -sfn ../../agent "$typecheck/jobs_agent"
ln -sfn ../../handlers "$typecheck/jobs_agent_handlers"

# Two workers (pytest-xdist): the suite spends most of its time waiting on real processes
# (brokers, agents, updaters: one process kept ~0.5 of the 2 cores busy), so a second worker
# fills those waits. Given through PYTEST_ADDOPTS so that the extra arguments, which come after
# it, win: `tests/run.sh -n 0` runs in one process. JOBS_AGENT_TEST_WORKERS sets the number.
# (Not `--dist loadgroup`: xdist 3.8 cannot tag a test's id under pytest 9.2, so its groups are
# silently ignored; a fixture that must run once per session shares its result by a file, as
# tests/test_benchmarks_smoke.py's `efficiency` does.)
export PYTEST_ADDOPTS="-n ${JOBS_AGENT_TEST_WORKERS:-2} ${PYTEST_ADDOPTS:-}"
gate "pytest" "$VENV/bin/python" -m pytest "$@"
gate "ruff check" "$VENV/bin/ruff" check .
gate "ruff format --check" "$VENV/bin/ruff" format --check .
gate "mypy --strict" env MYPYPATH="$typecheck" "$VENV/bin/mypy" --strict -p jobs_agent -p jobs_agent_handlers

echo
if [ ${#failed[@]} -gt 0 ]; then
    printf '== FAILED: %s\n' "${failed[@]}"
fi
echo "gates: $passed passed, ${#failed[@]} failed"
[ ${#failed[@]} -eq 0 ]
