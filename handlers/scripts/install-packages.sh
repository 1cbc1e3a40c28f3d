#!/bin/sh
# install-packages.sh RUNASUSER "PKG [PKG...]" -- the handler of AWS-Install-Application.
set -eu
shift
. "$(dirname "$0")/_packages.sh"
# $packages holds only checked names; it is split on purpose (pathname expansion is off).
if command -v apt-get >/dev/null 2>&1; then
    echo "installing with apt-get:$packages"
    exec apt-get install -y $packages
elif command -v dnf >/dev/null 2>&1; then
    echo "installing with dnf:$packages"
    exec dnf install -y $packages
elif command -v yum >/dev/null 2>&1; then
    echo "installing with yum:$packages"
    exec yum install -y $packages
fi
echo "no supported package manager (apt-get, dnf, yum) found" >&2
exit 1
