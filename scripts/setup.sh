#!/usr/bin/env bash
# Create .venv in the repo root and install deluge_nb into it, editable,
# with the local model ([local]) and the test tools ([dev]).
#
# Safe to run again: pip is skipped while .venv/.deluge-installed is newer
# than pyproject.toml. Delete .venv to start over.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
stamp="$venv/.deluge-installed"
cd "$root"

bash scripts/make_venv.sh "$venv"

if [[ -f "$stamp" && "$stamp" -nt pyproject.toml ]]; then
    exit 0
fi

echo "setup.sh: installing deluge_nb[local,dev] into .venv" >&2
pip=("$venv/bin/python" -m pip --quiet --disable-pip-version-check)
"${pip[@]}" install --upgrade pip
# The first install compiles llama-cpp-python (about 10 minutes on two
# cores); pip keeps the wheel in its cache, so later ones take seconds.
"${pip[@]}" install --progress-bar off -e '.[local,dev]'
touch "$stamp"
