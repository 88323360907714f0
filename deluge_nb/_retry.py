"""The retry policy, as small pure functions.

Retried: connection errors, timeouts, 408, 409, 429, 5xx and 529. Not
retried: any other 4xx, which would fail the same way again. A server's
``x-should-retry`` header overrides the status. Waits grow exponentially
from ``BACKOFF_BASE_S`` up to ``BACKOFF_CAP_S``, each scaled by a random
factor in [0.5, 1] so that a herd of failed requests spreads out; a wait
the server asks for (``retry-after-ms``, ``retry-after``) wins when it is
no longer than ``MAX_SERVER_WAIT_S``.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Mapping
from email.utils import parsedate_to_datetime

BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 8.0
MAX_SERVER_WAIT_S = 120.0

RETRYABLE_STATUSES = frozenset({408, 409, 429})

_GO_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(h|ms|us|µs|ns|m|s)")
_GO_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6}
_GO_UNITS["ns"] = 1e-9


def is_retryable_status(status: int, headers: Mapping[str, str] | None = None) -> bool:
    """Whether a response with this status is worth another attempt."""
    override = (headers or {}).get("x-should-retry", "").strip().lower()
    if override == "true":
        return True
    if override == "false":
        return False
    return status in RETRYABLE_STATUSES or status >= 500


def backoff_delay(attempt: int, rng: random.Random | None = None) -> float:
    """Seconds to wait before attempt ``attempt + 1`` after a failure.

    ``attempt`` is the 1-based number of the attempt that failed.
    """
    ceiling = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2.0 ** max(0, attempt - 1))
    draw = rng.random() if rng is not None else random.random()
    return ceiling * (0.5 + 0.5 * draw)


def parse_retry_after(
    headers: Mapping[str, str], now: float | None = None
) -> float | None:
    """The wait a response asks for, in seconds, or None if it names none.

    Reads ``retry-after-ms`` first, then ``retry-after`` as seconds (a
    fraction allowed) or as an HTTP date (``now`` is the current Unix time,
    needed only for that form). Junk, negative and non-finite values are
    ignored.
    """
    millis = parse_finite(headers.get("retry-after-ms"))
    if millis is not None and millis >= 0:
        return millis / 1000

    raw = headers.get("retry-after")
    if raw is None:
        return None
    seconds = parse_finite(raw)
    if seconds is not None:
        return seconds if seconds >= 0 else None
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or now is None:
        return None
    return max(0.0, when.timestamp() - now)


def parse_go_duration(text: str | None) -> float | None:
    """Seconds in a Go-style duration such as ``1s``, ``12ms`` or ``6m0s``.

    Returns None for anything else, including an empty string.
    """
    if not text:
        return None
    text = text.strip()
    pos = 0
    total = 0.0
    for match in _GO_DURATION_PART.finditer(text):
        if match.start() != pos:
            return None
        total += float(match.group(1)) * _GO_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or pos == 0:
        return None
    return total


def retry_delay(
    attempt: int,
    headers: Mapping[str, str] | None = None,
    *,
    now: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """How long to wait after failed attempt ``attempt``.

    The server's wait when it gives a usable one, else backoff with jitter.
    """
    server = usable_server_wait(parse_retry_after(headers or {}, now))
    if server is not None:
        return server
    return backoff_delay(attempt, rng)


def usable_server_wait(seconds: float | None) -> float | None:
    """A server's wait if it is one to honour, else None (back off instead).

    A wait beyond ``MAX_SERVER_WAIT_S`` (a day's quota gone, or a junk
    ``retry-after: 1e9``) would hold every request on the key for that
    long, so ordinary backoff is used instead, as the official SDKs do.
    """
    if seconds is None or seconds > MAX_SERVER_WAIT_S:
        return None
    return seconds


def parse_finite(raw: str | None) -> float | None:
    """A header value as a finite float, or None for anything else."""
    if raw is None:
        return None
    try:
        value = float(raw.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None
