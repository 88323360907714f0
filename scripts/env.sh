# Sourced by the scripts in this folder: the project's .venv first on PATH,
# and tiktoken's encodings from the shared offline cache when there is one.
_deluge_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if [[ -z "${TIKTOKEN_CACHE_DIR:-}" && -d "$_deluge_root/../shared/tiktoken-cache" ]]; then
    TIKTOKEN_CACHE_DIR="$(cd "$_deluge_root/../shared/tiktoken-cache" && pwd)"
    export TIKTOKEN_CACHE_DIR
fi

export PATH="$_deluge_root/.venv/bin:$PATH"
unset _deluge_root
