#!/bin/sh
# stop-services.sh RUNASUSER "SERVICE [SERVICE...]" -- the handler of AWS-Stop-Application.
set -eu
shift
. "$(dirname "$0")/_services.sh"
services_do stop "$@"
