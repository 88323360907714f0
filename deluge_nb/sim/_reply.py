"""What the simulated model says: seeded pseudo-random words, or an echo.

A generated reply depends only on a key built from the seed and the request
(hashed, never drawn from a shared random generator), so the same request
gets the same words whatever else the server is doing: other requests,
injected faults, arrival order.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from typing import Any, Literal

CountText = Callable[[str, str | None], int]
Finish = Literal["stop", "length"]

MIN_REPLY_TOKENS = 5
MAX_REPLY_TOKENS = 60

# Short, common words; each is a single token with its leading space in the
# OpenAI encodings, so a reply of N words is close to N tokens.
_VOCABULARY = (
    "the", "a", "river", "stone", "light", "data", "model", "answer", "quick",
    "slow", "green", "blue", "table", "frame", "column", "row", "value", "limit",
    "token", "minute", "second", "cloud", "rain", "sun", "north", "south",
    "simple", "clear", "small", "large", "early", "late", "open", "close",
    "read", "write", "send", "wait", "run", "stop", "good", "bad", "new", "old",
    "first", "last", "high", "low", "fast", "calm", "bright", "dark", "warm",
    "cold", "city", "field", "paper", "glass", "bird", "tree", "road", "house",
    "music", "number", "story", "idea", "signal", "queue", "batch", "result",
)  # fmt: skip


def generated_reply(
    key: Any, max_tokens: int, count_text: CountText, tokenizer: str | None
) -> tuple[str, int, Finish]:
    """Pseudo-random words, the same for the same `key`.

    Parameters
    ----------
    key : any
        JSON-serialisable data identifying the request, seed included.
    max_tokens : int
        The cap; a longer reply is cut and finishes with ``"length"``.
    count_text : callable
        Token counter, ``count_text(text, tokenizer)``.
    tokenizer : str or None
        Passed to `count_text`.

    Returns
    -------
    text : str
    tokens : int
        Tokens of `text`.
    finish : {"stop", "length"}
    """
    encoded = json.dumps(key, sort_keys=True, ensure_ascii=False, default=str)
    digest = hashlib.sha256(encoded.encode()).digest()
    rng = random.Random(int.from_bytes(digest[:8], "big"))
    wanted = rng.randint(MIN_REPLY_TOKENS, MAX_REPLY_TOKENS)
    budget = min(wanted, max_tokens)
    words = [rng.choice(_VOCABULARY) for _ in range(budget)]
    if words:
        words[0] = words[0].capitalize()
    text, tokens = _fit(words, budget, count_text, tokenizer)
    return text, tokens, "length" if wanted > max_tokens else "stop"


def echo_reply(
    text: str, max_tokens: int, count_text: CountText, tokenizer: str | None
) -> tuple[str, int, Finish]:
    """The user's text back, cut by words if it exceeds `max_tokens`."""
    tokens = count_text(text, tokenizer)
    if tokens <= max_tokens:
        return text, tokens, "stop"
    cut, tokens = _fit(text.split(), max_tokens, count_text, tokenizer)
    return cut, tokens, "length"


def _fit(
    words: list[str], budget: int, count_text: CountText, tokenizer: str | None
) -> tuple[str, int]:
    """Drop words from the end until the text has at most `budget` tokens."""
    text = " ".join(words)
    tokens = count_text(text, tokenizer)
    while tokens > budget and words:
        # Drop as many words as the excess is worth at the average tokens per
        # word (rounded down), so the loop ends in a few counts and keeps as
        # much text as fits.
        drop = max(1, (tokens - budget) * len(words) // tokens)
        del words[-drop:]
        text = " ".join(words)
        tokens = count_text(text, tokenizer)
    return text, tokens
