"""What a response's rate-limit headers say, as plain numbers.

OpenAI sends ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` with
resets as Go durations (``1s``, ``12ms``, ``6m0s``). Anthropic sends
``anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-
{limit,remaining,reset}`` with resets as RFC 3339 timestamps. Azure has been
seen sending ``-1`` or ``0``. Anything that does not parse to a sensible
number is dropped, so junk never reaches the limiter: a limit below 1, and
with a junk limit the rest of that dimension's headers too (Azure's
``limit: 0`` comes with ``remaining: 0``, which would throttle a job that
has budget).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from ._retry import parse_finite, parse_go_duration, parse_retry_after

DIMENSIONS = ("requests", "tokens", "input_tokens", "output_tokens")


@dataclass(frozen=True)
class ServerLimit:
    """One limit as the server reports it; any field may be unknown."""

    limit: float | None = None
    remaining: float | None = None
    reset_s: float | None = None


@dataclass(frozen=True)
class RateLimitHeaders:
    """Every limit a response reported, by dimension, and its retry wait."""

    limits: Mapping[str, ServerLimit]
    retry_after_s: float | None = None

    @property
    def any_limit(self) -> bool:
        return any(s.limit is not None for s in self.limits.values())


_PREFIXES = ("x-ratelimit-", "anthropic-ratelimit-", "retry-after")
_NOTHING = RateLimitHeaders({})


def parse_rate_limit_headers(
    headers: Mapping[str, str], now_unix: float
) -> RateLimitHeaders:
    """Read OpenAI- and Anthropic-style rate-limit headers.

    Parameters
    ----------
    headers
        Response headers (a case-insensitive mapping, or lower-case keys).
    now_unix
        The current Unix time, to turn RFC 3339 resets into seconds.
    """
    if not any(key.lower().startswith(_PREFIXES) for key in headers):
        return _NOTHING  # the common case for servers without limits
    limits: dict[str, ServerLimit] = {}
    for dimension in DIMENSIONS:
        wire = dimension.replace("_", "-")
        openai = _reported(
            headers.get(f"x-ratelimit-limit-{wire}"),
            headers.get(f"x-ratelimit-remaining-{wire}"),
            parse_go_duration(headers.get(f"x-ratelimit-reset-{wire}")),
        )
        prefix = f"anthropic-ratelimit-{wire}"
        if dimension == "tokens":
            # Anthropic's tokens-* repeats its most restrictive of input and
            # output, which have their own buckets here; as a combined
            # limit it would throttle too hard.
            anthropic = ServerLimit()
        else:
            anthropic = _reported(
                headers.get(f"{prefix}-limit"),
                headers.get(f"{prefix}-remaining"),
                _rfc3339_in(headers.get(f"{prefix}-reset"), now_unix),
            )
        for found in (openai, anthropic):
            if found != ServerLimit():
                limits[dimension] = found
                break
    return RateLimitHeaders(limits, parse_retry_after(headers, now_unix))


def _count(raw: str | None) -> float | None:
    value = parse_finite(raw)
    if value is None or value < 0:
        return None
    return value


def _reported(
    raw_limit: str | None, raw_remaining: str | None, reset_s: float | None
) -> ServerLimit:
    """One dimension's headers; nothing at all when its limit is junk.

    A limit below one request or token (``0``, ``-1``, ``0.5``) is junk,
    and so is what comes with it: Azure's ``limit: 0`` has ``remaining:
    0``, which would hold back a job that has budget.
    """
    limit = _count(raw_limit)
    if raw_limit is not None and (limit is None or limit < 1):
        return ServerLimit()
    return ServerLimit(limit, _count(raw_remaining), reset_s)


def _rfc3339_in(raw: str | None, now_unix: float) -> float | None:
    """Seconds from ``now_unix`` until an RFC 3339 timestamp, at least 0."""
    if not raw:
        return None
    text = raw.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now_unix)
