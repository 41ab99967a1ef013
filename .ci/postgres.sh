#!/usr/bin/env bash
# A throwaway PostgreSQL server for the test suite, on 127.0.0.1 only.
#
#   eval "$(.ci/postgres.sh start)"   # exports GATEWAY_TEST_POSTGRES_URL and _DIR
#   .ci/postgres.sh stop [DIR]        # DIR defaults to $GATEWAY_TEST_POSTGRES_DIR
#
# `start` prints only the two export lines on stdout (progress goes to stderr).
# The cluster lives in a fresh temporary folder: trust authentication for
# 127.0.0.1 alone, Unix sockets inside that folder, fsync on. As root the
# binaries run as the `postgres` user (they refuse to run as root). With no
# server binaries on the machine, root installs Debian's postgresql-15 first;
# `start` exits 3 when there is still none (the tests then skip PostgreSQL).
set -euo pipefail

say() { echo "postgres.sh: $*" >&2; }

find_bin() {
    local dir
    if dir=$(command -v initdb 2>/dev/null) && [ -n "$dir" ]; then
        dir=$(dirname "$(readlink -f "$dir")")
        if [ -x "$dir/pg_ctl" ] && [ -x "$dir/postgres" ]; then
            echo "$dir"
            return 0
        fi
    fi
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k4 -V -r); do
        if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ] && [ -x "$dir/postgres" ]; then
            echo "$dir"
            return 0
        fi
    done
    return 1
}

# Run a server binary as the user that owns the cluster.
as_owner() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

free_port() {
    python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()'
}

start() {
    local bin dir port
    if ! bin=$(find_bin); then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            say "no PostgreSQL server binaries: installing postgresql-15"
            {
                apt-get update -qq &&
                    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
                        --no-install-recommends postgresql-15
            } >&2 || say "apt-get install postgresql-15 failed"
        fi
        if ! bin=$(find_bin); then
            say "no PostgreSQL server binaries found"
            exit 3
        fi
    fi
    if [ "$(id -u)" = 0 ]; then
        # The postgres user must reach the folder: /tmp, not a private TMPDIR.
        dir=$(mktemp -d /tmp/gateway-pg-XXXXXX)
        id postgres >/dev/null 2>&1 || {
            say "running as root but there is no postgres user to run the server"
            exit 1
        }
        chown postgres: "$dir"
    else
        dir=$(mktemp -d "${TMPDIR:-/tmp}/gateway-pg-XXXXXX")
    fi
    chmod 700 "$dir"
    # Whatever fails from here on leaves no server or folder behind.
    trap 'stop "$dir"' EXIT
    cd "$dir"
    as_owner "$bin/initdb" -D "$dir/data" -U postgres -E UTF8 --locale=C \
        --auth=reject --no-sync >"$dir/initdb.log" 2>&1 || {
        cat "$dir/initdb.log" >&2
        exit 1
    }
    # Single-user mode needs no client program (psql may be missing).
    echo "CREATE DATABASE gateway_test" |
        as_owner "$bin/postgres" --single -D "$dir/data" postgres >"$dir/createdb.log" 2>&1 || {
        cat "$dir/createdb.log" >&2
        exit 1
    }
    # Trust on loopback TCP only; the Unix socket and every other host are refused.
    printf 'host all all 127.0.0.1/32 trust\n' | as_owner tee "$dir/data/pg_hba.conf" >/dev/null
    # The port is free when probed; another process may still take it first, so retry.
    local attempt
    for attempt in 1 2 3; do
        port=$(free_port)
        if as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
            -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=on -c synchronous_commit=on" \
            start >&2; then
            break
        fi
        if [ "$attempt" = 3 ]; then
            cat "$dir/server.log" >&2 || true
            exit 1
        fi
    done
    trap - EXIT
    say "PostgreSQL ($("$bin/postgres" --version)) on 127.0.0.1:$port, cluster $dir"
    echo "export GATEWAY_TEST_POSTGRES_URL=postgresql://postgres@127.0.0.1:$port/gateway_test"
    echo "export GATEWAY_TEST_POSTGRES_DIR=$dir"
}

stop() {
    local dir=${1:-${GATEWAY_TEST_POSTGRES_DIR:-}}
    if [ -z "$dir" ] || [ ! -d "$dir" ]; then
        return 0
    fi
    local bin
    bin=$(find_bin) || true
    if [ -n "$bin" ] && [ -f "$dir/data/postmaster.pid" ]; then
        (cd "$dir" && as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >&2) ||
            say "pg_ctl stop failed"
    fi
    rm -rf "$dir"
}

case "${1:-}" in
    start) start ;;
    stop) stop "${2:-}" ;;
    *)
        echo "usage: $0 start | stop [DIR]" >&2
        exit 2
        ;;
esac
