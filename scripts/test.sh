#!/usr/bin/env bash
# Set up everything the tests need, then run them from the repo root;
# arguments go to pytest (e.g. -m "not browser" for a quick local run).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
if ! bash scripts/setup_browser.sh; then
    echo "test.sh: could not install Chromium; the browser test will be skipped" >&2
fi
# shellcheck source=scripts/env.sh
source scripts/env.sh
exec python -m pytest "$@"
