#!/bin/sh
# reboot.sh RUNASUSER -- the handler of the AWS-Reboot managed template, for jobs-agent.
#
# It does not reboot by itself. It exits with the script protocol's reboot-required status;
# the agent records that the job awaits a reboot, runs its configured reboot command, checks
# after the boot that the device really rebooted, and continues with the next step. No lock
# file is needed (the Device Client's sample keeps one in /var/tmp).
set -eu
echo "reboot requested by job ${JOBS_AGENT_JOB_ID:-(unknown)}; the agent reboots the device"
exit "${JOBS_AGENT_EXIT_REBOOT:-91}"
