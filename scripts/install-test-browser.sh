#!/usr/bin/env bash
# Install the browser the dashboard's browser tests drive: Debian's chromium and
# chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver). Test tools that download their
# own browser cannot work on machines without internet access, so we use the distribution's.
#
# Already installed: does nothing. On Debian/Ubuntu as root (or with sudo): apt-get install.
# Anywhere else: says how to install them and exits 0; the browser tests then skip, naming
# this script (CI sets AUTOTUNE_REQUIRE_BROWSER=1, which turns that skip into a failure).
set -euo pipefail

if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "install-test-browser: no apt-get here; install Chromium and a matching ChromeDriver" \
         "and put 'chromium' and 'chromedriver' on PATH to run the browser tests" >&2
    exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
    as_root=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
else
    echo "install-test-browser: run 'sudo apt-get install chromium chromium-driver' to run" \
         "the browser tests" >&2
    exit 0
fi
echo "install-test-browser: apt-get install chromium chromium-driver" >&2
export DEBIAN_FRONTEND=noninteractive
if ! "${as_root[@]}" apt-get install -y -q chromium chromium-driver >/dev/null; then
    # Stale package lists on a fresh machine: refresh once and retry.
    "${as_root[@]}" apt-get update -q >/dev/null
    "${as_root[@]}" apt-get install -y -q chromium chromium-driver >/dev/null
fi
