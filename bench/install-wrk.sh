#!/usr/bin/env bash
# wrk, the HTTP load generator `make bench` drives the exchange benchmark with.
#
#   bench/install-wrk.sh               # nothing to do when wrk is on PATH
#   WRK=/opt/bin/wrk bench/install-wrk.sh   # or when that one is executable
#
# Where wrk is missing, root on a Debian-like system installs Debian's `wrk`
# package (no recommends; it starts no service). Anyone else gets instructions
# on stderr and exit status 1. Progress goes to stderr.
set -euo pipefail

say() { echo "install-wrk.sh: $*" >&2; }

WRK=${WRK:-wrk}

if command -v "$WRK" >/dev/null 2>&1; then
    exit 0
fi

explain() {
    cat >&2 <<EOF
install-wrk.sh: '$WRK' not found, and $1.
  \`make bench\` drives the gateways with wrk (and a Lua script). Any of these provides it:
  - as root:  bench/install-wrk.sh        (installs Debian's wrk package)
  - by hand:  sudo apt-get install --no-install-recommends wrk
  - a wrk built from source with its LuaJIT, on PATH, or: make bench WRK=/path/to/wrk
EOF
}

if [ "$(id -u)" != 0 ]; then
    explain "installing it needs root"
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    explain "this system has no apt-get to install Debian's wrk package with"
    exit 1
fi

started=$(date +%s)
export DEBIAN_FRONTEND=noninteractive
"$(dirname "$0")/../.ci/apt-install.sh" wrk

if ! command -v "$WRK" >/dev/null 2>&1; then
    say "the wrk package is installed but '$WRK' is still not on PATH"
    exit 1
fi
say "$(dpkg-query -W -f='wrk ${Version}' wrk 2>/dev/null || echo wrk) installed" \
    "in $(($(date +%s) - started)) s"
