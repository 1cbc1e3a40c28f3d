#!/bin/sh
# restart-services.sh RUNASUSER "SERVICE [SERVICE...]" -- the handler of AWS-Restart-Application.
set -eu
shift
. "$(dirname "$0")/_services.sh"
services_do restart "$@"
