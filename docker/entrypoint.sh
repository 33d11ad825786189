#!/bin/sh
# The image's entrypoint: `opsgate "$@"`, with settings read from secret files first.
#
# Each file in $OPSGATE_SECRETS_DIR (default /run/secrets, where compose, Swarm and Kubernetes
# mount secrets) named opsgate_<setting> becomes the variable OPSGATE_<SETTING>, its content
# without the trailing newline: /run/secrets/opsgate_secret_key -> OPSGATE_SECRET_KEY. A
# variable already set in the environment is kept. Values never appear on a command line.
set -eu
secrets_dir="${OPSGATE_SECRETS_DIR:-/run/secrets}"
if [ -d "$secrets_dir" ]; then
    for file in "$secrets_dir"/opsgate_*; do
        [ -f "$file" ] || continue
        name=$(basename "$file" | tr '[:lower:]' '[:upper:]')
        case "$name" in
            *[!A-Z0-9_]*) continue ;;
        esac
        if eval "[ -z \"\${$name+set}\" ]"; then
            value=$(cat "$file")
            export "$name=$value"
        fi
    done
fi
exec opsgate "$@"
