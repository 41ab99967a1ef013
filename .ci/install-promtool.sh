#!/usr/bin/env bash
# promtool for `make test` (promtool check config / check rules / test rules on deploy/prometheus).
#
#   .ci/install-promtool.sh          # nothing to do when promtool is on PATH
#   PROMTOOL=/opt/bin/promtool .ci/install-promtool.sh   # or when that one is executable
#
# Where promtool is missing, root on a Debian-like system installs Debian's
# `prometheus` package (it ships promtool) without recommends, and without
# letting the package start a Prometheus server: a temporary policy-rc.d
# refuses every service start while dpkg runs, the service is then disabled
# at boot, and a server the installation started anyway is stopped. Anyone
# else gets instructions on stderr and exit status 1. Progress goes to stderr.
set -euo pipefail

say() { echo "install-promtool.sh: $*" >&2; }

PROMTOOL=${PROMTOOL:-promtool}

if command -v "$PROMTOOL" >/dev/null 2>&1; then
    exit 0
fi

explain() {
    cat >&2 <<EOF
install-promtool.sh: '$PROMTOOL' not found, and $1.
  \`make test\` checks deploy/prometheus with promtool. Any of these provides it:
  - as root:  .ci/install-promtool.sh
      (installs Debian's prometheus package; no Prometheus server is left running or enabled)
  - by hand:  sudo apt-get install --no-install-recommends prometheus
      then    sudo systemctl disable --now prometheus   # the package starts a server otherwise
  - a release tarball from https://prometheus.io/download/ with promtool on PATH,
      or make test PROMTOOL=/path/to/promtool
EOF
}

if [ "$(id -u)" != 0 ]; then
    explain "installing it needs root"
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg >/dev/null 2>&1; then
    explain "this system has no apt-get to install Debian's prometheus package with"
    exit 1
fi

started=$(date +%s)
export DEBIAN_FRONTEND=noninteractive

# Prometheus processes running before the installation (none of ours to touch).
running_before=" $(pgrep -x prometheus | tr '\n' ' ' || true)"

# While dpkg runs, invoke-rc.d and deb-systemd-invoke ask policy-rc.d before
# starting a service; 101 means "not allowed". Any existing policy is put back.
policy=/usr/sbin/policy-rc.d
backup=""
restore_policy() {
    if [ -n "$backup" ]; then
        mv -f "$backup" "$policy"
    else
        rm -f "$policy"
    fi
}
if [ -e "$policy" ] || [ -L "$policy" ]; then
    backup=$(mktemp "$policy.before-promtool.XXXXXX")
    mv -f "$policy" "$backup"
fi
trap restore_policy EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
printf '#!/bin/sh\n# install-promtool.sh: no service starts while prometheus is installed.\nexit 101\n' \
    >"$policy"
chmod 755 "$policy"

say "installing Debian's prometheus package (it provides promtool)"
"$(dirname "$0")/apt-install.sh" prometheus
restore_policy
backup=""
trap - EXIT

# Not at boot either: the project needs promtool, not a server.
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    systemctl disable --now prometheus.service >&2 || say "systemctl disable prometheus failed"
elif [ -x /etc/init.d/prometheus ] && command -v update-rc.d >/dev/null 2>&1; then
    update-rc.d prometheus disable >/dev/null 2>&1 || say "update-rc.d prometheus disable failed"
fi
# Whatever the installation started after all is stopped, by process id.
for pid in $(pgrep -x prometheus || true); do
    case "$running_before" in
        *" $pid "*) ;;
        *)
            say "the installation started Prometheus (pid $pid): stopping it"
            kill "$pid" 2>/dev/null || true
            ;;
    esac
done
sleep 1
for pid in $(pgrep -x prometheus || true); do
    case "$running_before" in
        *" $pid "*) ;;
        *)
            say "Prometheus (pid $pid), started by the installation, is still running"
            exit 1
            ;;
    esac
done

if ! command -v "$PROMTOOL" >/dev/null 2>&1; then
    say "the prometheus package is installed but '$PROMTOOL' is still not on PATH"
    exit 1
fi
say "$("$PROMTOOL" --version 2>&1 | head -n 1) installed in $(($(date +%s) - started)) s;" \
    "the prometheus service is disabled and not running"
