#!/bin/sh
# start-services.sh RUNASUSER "SERVICE [SERVICE...]" -- the handler of AWS-Start-Application.
set -eu
shift
. "$(dirname "$0")/_services.sh"
services_do start "$@"
