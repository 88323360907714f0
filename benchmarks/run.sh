#!/usr/bin/env bash
# The one command for the throughput benchmark:
#
#     bash benchmarks/run.sh                    # every scenario, ~6.5 minutes
#     bash benchmarks/run.sh --quick            # a smoke run, ~2 minutes
#     bash benchmarks/run.sh --scenarios S1,S3 --clients deluge_nb,openai
#
# Creates .venv-bench beside .venv (the peers never touch the project's own
# environment), installs deluge_nb from this checkout plus the peers of
# benchmarks/requirements.txt into it, and runs benchmarks/run.py with the
# arguments given here. Safe to run again: pip is skipped while the stamp is
# newer than both pyproject.toml and requirements.txt.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv-bench"
stamp="$venv/.bench-installed"
cd "$root"

bash scripts/make_venv.sh "$venv"

if [[ ! -f "$stamp" || pyproject.toml -nt "$stamp" \
      || benchmarks/requirements.txt -nt "$stamp" ]]; then
    echo "run.sh: installing deluge_nb and the peers into .venv-bench" >&2
    pip=("$venv/bin/python" -m pip --quiet --disable-pip-version-check)
    "${pip[@]}" install --progress-bar off -e . -r benchmarks/requirements.txt
    touch "$stamp"
fi

# tiktoken's encodings from the shared offline cache when there is one.
if [[ -z "${TIKTOKEN_CACHE_DIR:-}" && -d "$root/../shared/tiktoken-cache" ]]; then
    TIKTOKEN_CACHE_DIR="$(cd "$root/../shared/tiktoken-cache" && pwd)"
    export TIKTOKEN_CACHE_DIR
fi
# Every client must really send every request: no response cache.
export DELUGE_NB_CACHE=off

exec "$venv/bin/python" benchmarks/run.py "$@"
