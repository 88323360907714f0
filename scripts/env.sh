# Sourced by the scripts in this folder: the project's .venv first on PATH,
# and tiktoken's encodings from the shared offline cache when there is one.
_deluge_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# The encodings sit in shared/ beside the checkout; a clone of a local
# checkout (git clone /work/main /tmp/x) finds them beside its origin.
if [[ -z "${TIKTOKEN_CACHE_DIR:-}" ]]; then
    _deluge_origin="$(git -C "$_deluge_root" config --get remote.origin.url 2>/dev/null || true)"
    for _deluge_cache in "$_deluge_root/../shared/tiktoken-cache" \
        ${_deluge_origin:+"$_deluge_origin/../shared/tiktoken-cache"}; do
        if [[ -d "$_deluge_cache" ]]; then
            TIKTOKEN_CACHE_DIR="$(cd "$_deluge_cache" && pwd)"
            export TIKTOKEN_CACHE_DIR
            break
        fi
    done
    unset _deluge_origin _deluge_cache
fi

export PATH="$_deluge_root/.venv/bin:$PATH"
unset _deluge_root
