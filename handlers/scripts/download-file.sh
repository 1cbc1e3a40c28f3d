#!/bin/sh
# download-file.sh RUNASUSER URL PATH [SHA256] -- the handler of AWS-Download-File.
#
# The download itself is the agent's download-file handler (resume with Range requests,
# retries with backoff, TLS verification, sha256 check, atomic rename into place), run with
# the agent's Python interpreter. The first argument is the runAsUser value: the agent has
# already switched to that user, so it is not used here.
set -eu
shift
if [ "$#" -lt 2 ] || [ "$#" -gt 3 ]; then
    echo "usage: download-file.sh RUNASUSER URL PATH [SHA256]" >&2
    exit "${JOBS_AGENT_EXIT_REJECTED:-90}"
fi
exec "${JOBS_AGENT_PYTHON:-python3}" -m jobs_agent_handlers.download_file "$@"
