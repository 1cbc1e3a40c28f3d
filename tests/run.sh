#!/usr/bin/env bash
# The one test command (README "Quick start" and .ci/run both call this file).
# On a fresh Debian/Ubuntu machine with Python 3.11 it installs what the tests need (mosquitto,
# RAUC and SWUpdate from the distribution's packages, a virtual environment with the test
# extras), runs the quality gates (ruff, mypy --strict) and then the whole pytest suite. Extra
# arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
    echo "== installing mosquitto"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null
fi
# The broker fixtures start their own mosquitto; the distribution's service is not needed.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet mosquitto 2>/dev/null; then
    as_root systemctl stop mosquitto || true
fi

# The system-update tests run the real RAUC and SWUpdate on throwaway devices (tests/fixtures/
# rauc.py, swupdate.py). Install what is missing; the packages must not start their services
# (swupdate's would take /tmp/sockinstctrl; the tests run private instances), so a
# policy-rc.d that denies every start stands in during the install, unless one is already there.
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]; }
updater_packages=()
for tool_package in rauc:rauc swupdate:swupdate fw_printenv:libubootenv-tool \
    mksquashfs:squashfs-tools cpio:cpio openssl:openssl dbus-daemon:dbus dbus-send:dbus \
    unshare:util-linux; do
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

echo "== ruff check"
"$VENV/bin/ruff" check .
echo "== ruff format --check"
"$VENV/bin/ruff" format --check .
echo "== mypy --strict agent handlers"
# The folders are installed as jobs_agent and jobs_agent_handlers (pyproject.toml): type-check
# them under those names through a folder of links, as mypy cannot follow setuptools' mapping.
typecheck=build/typecheck
mkdir -p "$typecheck"
ln -sfn ../../agent "$typecheck/jobs_agent"
ln -sfn ../../handlers "$typecheck/jobs_agent_handlers"
MYPYPATH="$typecheck" "$VENV/bin/mypy" --strict -p jobs_agent -p jobs_agent_handlers

echo "== pytest"
exec "$VENV/bin/python" -m pytest "$@"
