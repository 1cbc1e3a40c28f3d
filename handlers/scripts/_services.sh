# Shared by start-, stop- and restart-services.sh (sourced, not run): services_do ACTION ARGS...
#
# The managed templates pass the service list as ONE argument ("nginx cron"). It is split on
# blanks with pathname expansion off and every name is checked before systemctl sees it.
services_do() {
    action=$1
    shift
    set -f
    count=0
    failed=""
    for arg in "$@"; do
        for service in $arg; do
            case $service in
                -* | *[!A-Za-z0-9@._:-]*)
                    echo "refusing service name '$service'" >&2
                    exit "${JOBS_AGENT_EXIT_REJECTED:-90}"
                    ;;
                jobs-agent | jobs-agent.service)
                    echo "refusing to $action jobs-agent from one of its own jobs" >&2
                    exit "${JOBS_AGENT_EXIT_REJECTED:-90}"
                    ;;
            esac
            count=$((count + 1))
            echo "$action $service"
            if command -v systemctl >/dev/null 2>&1; then
                systemctl "$action" "$service" || failed="$failed $service"
            elif command -v service >/dev/null 2>&1; then
                service "$service" "$action" || failed="$failed $service"
            else
                echo "neither systemctl nor service is available" >&2
                exit 1
            fi
        done
    done
    if [ "$count" -eq 0 ]; then
        echo "no service names given" >&2
        exit "${JOBS_AGENT_EXIT_REJECTED:-90}"
    fi
    if [ -n "$failed" ]; then
        echo "could not $action:$failed" >&2
        exit 1
    fi
}
