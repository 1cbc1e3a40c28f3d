#!/bin/sh
# remove-packages.sh RUNASUSER "PKG [PKG...]" -- the handler of AWS-Remove-Application.
set -eu
shift
. "$(dirname "$0")/_packages.sh"
# $packages holds only checked names; it is split on purpose (pathname expansion is off).
if command -v apt-get >/dev/null 2>&1; then
    echo "removing with apt-get:$packages"
    exec apt-get remove -y $packages
elif command -v dnf >/dev/null 2>&1; then
    echo "removing with dnf:$packages"
    exec dnf remove -y $packages
elif command -v yum >/dev/null 2>&1; then
    echo "removing with yum:$packages"
    exec yum remove -y $packages
fi
echo "no supported package manager (apt-get, dnf, yum) found" >&2
exit 1
