#!/usr/bin/env bash
# Install the browser the dashboard's browser tests drive: Debian's chromium and
# chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver). Test tools that download their
# own browser cannot work on machines without internet access, so we use the distribution's.
#
# Already there (chromium or chromium-browser or google-chrome, and chromedriver): does
# nothing. On Debian as root (or with sudo): apt-get install. Anywhere else, or when the
# install fails: says what to install and exits 0, so the README's test command goes on; the
# browser tests then skip, naming this script (CI sets AUTOTUNE_REQUIRE_BROWSER=1, which
# turns that skip into a failure).
set -uo pipefail

have() { command -v "$1" >/dev/null 2>&1; }
hint() {
    echo "install-test-browser: $1; install Chromium and a matching ChromeDriver (Debian:" \
         "apt-get install chromium chromium-driver) to run the browser tests" >&2
    exit 0
}

if { have chromium || have chromium-browser || have google-chrome; } && have chromedriver; then
    exit 0
fi
have apt-get || hint "no apt-get here"
if [ "$(id -u)" -eq 0 ]; then
    as_root=()
elif have sudo && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
else
    hint "not root and no password-less sudo"
fi
echo "install-test-browser: apt-get install chromium chromium-driver" >&2
export DEBIAN_FRONTEND=noninteractive
if ! "${as_root[@]}" apt-get install -y -q chromium chromium-driver >/dev/null; then
    # Stale package lists on a fresh machine: refresh once and retry.
    "${as_root[@]}" apt-get update -q >/dev/null \
        && "${as_root[@]}" apt-get install -y -q chromium chromium-driver >/dev/null \
        || hint "apt-get could not install them"
fi
