#!/usr/bin/env bash
# Explain HumanEval functions with a real model: see scripts/demo.py --help.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
# shellcheck source=scripts/env.sh
source "$root/scripts/env.sh"
exec python "$root/scripts/demo.py" "$@"
