#!/usr/bin/env bash
# Install what the browser test (tests/browser) needs outside the venv:
# Debian's Chromium at /usr/bin/chromium. The test drives it through the
# playwright package (a dev dependency); Playwright's own browser download
# is never used.
#
# Does nothing when /usr/bin/chromium is already there.
set -euo pipefail

if [[ -x /usr/bin/chromium ]]; then
    exit 0
fi

sudo=()
if [[ "$(id -u)" -ne 0 ]]; then
    sudo=(sudo)
fi

echo "setup_browser.sh: installing Debian's chromium" >&2
"${sudo[@]}" apt-get update -q
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium
/usr/bin/chromium --version >&2
