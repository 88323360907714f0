"""Fixtures shared by the whole suite."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from deluge_nb.local import LocalServer, serve_local_model

# Each test chooses its cache explicitly; the user's default cache would
# otherwise answer one test with another's rows.
os.environ.setdefault("DELUGE_NB_CACHE", "off")

REPO = Path(__file__).resolve().parent.parent
TIKTOKEN_CACHE = REPO.parent / "shared" / "tiktoken-cache"


@pytest.fixture(scope="session", autouse=True)
def _tiktoken_cache() -> Iterator[None]:
    """Read tiktoken's encodings from the shared offline cache, if present.

    Without it tiktoken would try to download them; an explicit
    ``TIKTOKEN_CACHE_DIR`` from the environment wins.
    """
    if "TIKTOKEN_CACHE_DIR" in os.environ or not TIKTOKEN_CACHE.is_dir():
        yield
        return

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TIKTOKEN_CACHE_DIR", str(TIKTOKEN_CACHE))
        yield


@pytest.fixture(scope="session")
def local_llm() -> Iterator[LocalServer]:
    """SmolLM2 served by llama.cpp, started once for the session.

    Never skipped: ``scripts/test.sh`` installs ``deluge_nb[local]``, so a
    missing llama-cpp-python is a broken setup and fails loudly here.
    """
    with serve_local_model() as server:
        yield server
