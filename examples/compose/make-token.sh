#!/bin/sh
# Prepares what the compose quickstart needs and the repository must not contain:
#   secrets/token  a random webhook bearer token (openssl rand); Alertmanager sends it, the exporter checks it
#   .env           WEBHOOK_TOKEN_FILE=./secrets/token and DOCKER_GID (the group owning the Docker socket),
#                  read by `docker compose` from this directory; other lines in .env are kept
# `docker compose up` refuses to start until this has run. An existing token is kept (Alertmanager and the
# exporter must agree on it); --force writes a new one (then `docker compose up -d --force-recreate`).
#
#   ./make-token.sh [--force]
#   DOCKER_GID=998 ./make-token.sh             # engine elsewhere, or a socket this shell cannot stat
#   DOCKER_SOCKET=/run/docker.sock ./make-token.sh
set -eu

force=0
case "${1:-}" in
    "") ;;
    --force) force=1 ;;
    *) echo "usage: $0 [--force]" >&2; exit 2 ;;
esac

cd "$(dirname "$0")"

socket="${DOCKER_SOCKET:-/var/run/docker.sock}"
if [ -z "${DOCKER_GID:-}" ]; then
    if [ ! -S "$socket" ]; then
        echo "$0: $socket is not a socket: set DOCKER_GID to the gid owning the Docker socket of the host the" \
            "stack runs on (stat -c %g <socket>), or DOCKER_SOCKET to the socket's path" >&2
        exit 1
    fi
    DOCKER_GID="$(stat -c %g "$socket" 2>/dev/null || stat -f %g "$socket")"   # GNU, else BSD/macOS stat
fi
case "$DOCKER_GID" in
    "" | *[!0-9]*) echo "$0: DOCKER_GID must be a numeric gid, not '$DOCKER_GID'" >&2; exit 1 ;;
esac
command -v openssl >/dev/null 2>&1 || { echo "$0: openssl is needed to generate the token" >&2; exit 1; }

umask 077
mkdir -p secrets
# Only the owner may enter secrets/ ...
chmod 700 secrets
if [ -s secrets/token ] && [ "$force" -eq 0 ]; then
    echo "secrets/token exists: kept (--force writes a new one)"
else
    tmp="$(mktemp secrets/.token.XXXXXX)"
    openssl rand -hex 32 >"$tmp"
    # ... while the file itself is readable by the containers' users (exporter uid 10151, Alertmanager
    # nobody): compose bind-mounts it with the host's owner and mode, and the directory is not mounted.
    chmod 644 "$tmp"
    mv -f "$tmp" secrets/token
    echo "wrote secrets/token"
fi

# Replace our two keys in .env, keep anything else the user put there (e.g. GRAFANA_ADMIN_PASSWORD).
tmp="$(mktemp .env.XXXXXX)"
if [ -f .env ]; then
    grep -v -E '^(WEBHOOK_TOKEN_FILE|DOCKER_GID)=' .env >"$tmp" || true
fi
{
    echo "WEBHOOK_TOKEN_FILE=./secrets/token"
    echo "DOCKER_GID=$DOCKER_GID"
} >>"$tmp"
mv -f "$tmp" .env
echo "wrote .env (DOCKER_GID=$DOCKER_GID); now: docker compose up -d --build"
