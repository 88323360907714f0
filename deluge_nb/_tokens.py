"""Token estimates before a request is sent.

The limiter reserves a request's input tokens plus ``max_tokens`` before it
sends it, so it needs a count of the prompt first. For OpenAI models that
count comes from tiktoken and matches the server's ``prompt_tokens`` within
a token or two. tiktoken downloads its encodings on first use; when that is
impossible (no network, empty cache) or the model has no known tokenizer,
the count is an approximation of one token per four characters, labelled
as such, and one warning says so.
"""

from __future__ import annotations

import logging
import math
import threading
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

logger = logging.getLogger(__name__)

# Chat framing, as OpenAI's models count it: every message costs a few
# tokens for its role and delimiters, and the reply is primed with three.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3

# The approximation used when no encoding is available: English text runs
# close to four characters a token in OpenAI's encodings.
CHARS_PER_TOKEN = 4

# An encoding that cannot load within this many seconds is treated as
# unavailable, so an unreachable download never hangs a job.
LOAD_TIMEOUT_S = 10.0

_encodings: dict[str, Any] = {}
_unavailable: set[str] = set()
_lock = threading.Lock()


class ApproximateTokenCountWarning(UserWarning):
    """Token counts are estimates because no tokenizer could be loaded."""


def _load_encoding(name: str) -> Any:
    """Return the tiktoken encoding ``name``, or None when it cannot load."""
    with _lock:
        if name in _encodings:
            return _encodings[name]
        if name in _unavailable:
            return None

        box: dict[str, Any] = {}

        def load() -> None:
            try:
                import tiktoken

                box["encoding"] = tiktoken.get_encoding(name)
            except Exception as exc:  # any failure means: fall back
                box["error"] = exc

        # tiktoken may try a download; a daemon thread with a deadline keeps
        # a dead network from hanging the caller.
        thread = threading.Thread(target=load, name="deluge-tiktoken", daemon=True)
        thread.start()
        thread.join(LOAD_TIMEOUT_S)
        encoding = box.get("encoding")
        if encoding is None:
            reason = box.get("error", f"no answer within {LOAD_TIMEOUT_S:g} s")
            _unavailable.add(name)
            logger.debug("tiktoken encoding %s unavailable: %s", name, reason)
            warnings.warn(
                f"tiktoken encoding {name!r} could not be loaded ({reason}); token "
                f"counts are estimates of 1 token per {CHARS_PER_TOKEN} characters. "
                "Set TIKTOKEN_CACHE_DIR to a folder holding the encoding for exact "
                "counts.",
                ApproximateTokenCountWarning,
                stacklevel=4,
            )
            return None

        _encodings[name] = encoding
        return encoding


def is_exact(tokenizer: str | None) -> bool:
    """Whether counts for ``tokenizer`` are exact rather than estimated."""
    return tokenizer is not None and _load_encoding(tokenizer) is not None


def count_text_tokens(text: str, tokenizer: str | None) -> int:
    """Count the tokens of ``text`` with the named tiktoken encoding.

    Parameters
    ----------
    text
        Any text.
    tokenizer
        A tiktoken encoding name such as ``"o200k_base"``, or None for a
        model whose tokenizer is unknown.

    Returns
    -------
    int
        The exact count when the encoding loads, else ``ceil(len / 4)``.
    """
    encoding = _load_encoding(tokenizer) if tokenizer else None
    if encoding is None:
        return math.ceil(len(text) / CHARS_PER_TOKEN)
    return len(encoding.encode(text, disallowed_special=()))


def count_message_tokens(
    messages: Sequence[Mapping[str, Any]], tokenizer: str | None
) -> int:
    """Count the prompt tokens of a chat request, framing included.

    Each message costs its content and role plus ``TOKENS_PER_MESSAGE``; a
    ``name`` costs one more; the reply's priming adds
    ``REPLY_PRIMING_TOKENS``.
    """
    total = REPLY_PRIMING_TOKENS
    for message in messages:
        total += TOKENS_PER_MESSAGE
        for key, value in message.items():
            if value is None:
                continue
            total += count_text_tokens(_content_text(value), tokenizer)
            if key == "name":
                total += TOKENS_PER_NAME
    return total


def _content_text(value: Any) -> str:
    """Flatten a message field (a string or a list of content parts)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(
            part.get("text", "") if isinstance(part, Mapping) else str(part)
            for part in value
        )
    return str(value)
