#!/usr/bin/env bash
# make_venv.sh DIR: create a Python 3.10+ virtual environment at DIR unless
# a working one is there already. Shared by setup.sh and benchmarks/run.sh.
set -euo pipefail

venv="$1"
if [[ -x "$venv/bin/python" ]] && "$venv/bin/python" -c "" 2>/dev/null; then
    exit 0
fi

python=""
for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then
        python="$candidate"
        break
    fi
done
if [[ -z "$python" ]]; then
    echo "make_venv.sh: no python3 on PATH (deluge_nb needs Python 3.10+)" >&2
    exit 1
fi
echo "make_venv.sh: creating $venv with $("$python" --version)" >&2
# --clear: a folder left half-made, or pointing at a removed Python.
"$python" -m venv --clear "$venv"
