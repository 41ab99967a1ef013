#!/usr/bin/env bash
# Install one Debian package (root, apt-get): refresh the apt lists only when they
# do not name it, or when an install from stale lists fails, then try once more.
# Progress goes to stderr. Used by .ci/install-promtool.sh and bench/install-wrk.sh.
set -euo pipefail
package=$1
say() { echo "apt-install.sh: $*" >&2; }
export DEBIAN_FRONTEND=noninteractive

install_it() {
    apt-get install -y -qq --no-install-recommends "$package" >&2
}
candidate=$(apt-cache policy "$package" 2>/dev/null | awk '/Candidate:/ { print $2 }')
if [ -z "$candidate" ] || [ "$candidate" = "(none)" ]; then
    say "no $package package in the apt lists: apt-get update"
    apt-get update -qq >&2
fi
say "installing Debian's $package package"
if ! install_it; then
    # Stale lists name package versions the mirror no longer has.
    say "apt-get install failed: apt-get update, then one more try"
    apt-get update -qq >&2
    install_it
fi
