# Shared by install-packages.sh and remove-packages.sh (sourced, not run).
#
# The managed templates pass the package list as ONE argument ("pkg1 pkg2"); the Device
# Client's samples split it with an unquoted $@. Here it is split on blanks with pathname
# expansion off, and every name is checked before a package manager sees it, so neither a
# glob, nor an option ("--allow-unauthenticated"), nor shell syntax can get through.
set -f
packages=""
for arg in "$@"; do
    for name in $arg; do
        case $name in
            -* | *[!A-Za-z0-9.+:_~=@/-]*)
                echo "refusing package name '$name': expected letters, digits and . + : _ ~ = @ / -" >&2
                exit "${JOBS_AGENT_EXIT_REJECTED:-90}"
                ;;
        esac
        packages="$packages $name"
    done
done
if [ -z "$packages" ]; then
    echo "no package names given" >&2
    exit "${JOBS_AGENT_EXIT_REJECTED:-90}"
fi
export DEBIAN_FRONTEND=noninteractive
