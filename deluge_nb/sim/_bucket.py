"""The rate-limit bucket and the time formats of the limit headers.

`Bucket` reads time only through the clock it is given, so its arithmetic
can be tested with a fake clock. The formatters turn a wait into the text
each provider puts in its headers: Go durations (``"1.5s"``, ``"6m0s"``)
for OpenAI, RFC 3339 UTC timestamps (``"2026-12-03T16:20:05Z"``) for
Anthropic.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable

Clock = Callable[[], float]

# Float slack when comparing a refilled level with what a request needs, so
# that exactly one second of refill at 1/s counts as one whole request.
EPSILON = 1e-9


class Bucket:
    """A continuously refilling bucket measured against a per-minute limit.

    The bucket holds ``capacity = limit * burst_seconds / 60`` units, starts
    full and refills at ``limit / 60`` units per second. A request may take
    its amount when the level covers it. An amount larger than the capacity
    (but not larger than the limit) is let through when the bucket is full
    and leaves the level negative, so the debt is paid back by refill
    before anything else passes; without this, a request bigger than the
    burst could never succeed.

    Parameters
    ----------
    limit : float
        Units per minute.
    burst_seconds : float
        Seconds of refill the bucket can hold.
    clock : callable
        Returns the current time in seconds; read on every operation and
        nowhere else.
    """

    def __init__(self, limit: float, burst_seconds: float, clock: Clock) -> None:
        self._clock = clock
        self._updated: float | None = None
        self.limit = 0.0
        self.capacity = 0.0
        self._level = 0.0
        self.reconfigure(limit, burst_seconds)

    @property
    def rate(self) -> float:
        """Refill rate in units per second."""
        return self.limit / 60.0

    def reconfigure(self, limit: float, burst_seconds: float) -> None:
        """Change the limit, keeping the bucket as full (as a fraction) as it was.

        Parameters
        ----------
        limit : float
            New units per minute.
        burst_seconds : float
            New burst window.
        """
        if not limit > 0 or not burst_seconds > 0:
            raise ValueError("limit and burst_seconds must be positive")

        new_capacity = limit * burst_seconds / 60.0
        if self.capacity > 0:
            self._refill()
            self._level = self._level / self.capacity * new_capacity
        else:
            self._level = new_capacity
        self.limit = float(limit)
        self.capacity = new_capacity

    def level(self) -> float:
        """Units in the bucket now (negative while paying back a large request)."""
        self._refill()
        return self._level

    def wait_time(self, amount: float) -> float:
        """Seconds until `amount` can be taken; ``0.0`` if it can be taken now.

        Parameters
        ----------
        amount : float
            Units the request needs.

        Returns
        -------
        float
            Seconds of refill still needed.
        """
        needed = min(amount, self.capacity)
        deficit = needed - self.level()
        if deficit <= EPSILON * max(1.0, needed):
            return 0.0
        return deficit / self.rate

    def take(self, amount: float) -> None:
        """Remove `amount` unconditionally (call `wait_time` first)."""
        self._refill()
        self._level -= amount

    def give_back(self, amount: float) -> None:
        """Return `amount` units, never beyond the capacity."""
        self._refill()
        self._level = min(self.capacity, self._level + amount)

    def time_to_full(self) -> float:
        """Seconds until the bucket is full again."""
        return max(0.0, (self.capacity - self.level()) / self.rate)

    def remaining(self) -> int:
        """What is left of the per-minute limit, as the headers report it.

        The headers describe the per-minute limit while the bucket holds only
        a burst's worth, so the amount used (``capacity - level``) is
        subtracted from the limit: ``remaining = limit - (capacity - level)``,
        floored and clamped to ``[0, limit]``. A full bucket reports the whole
        limit; an empty one ``limit - capacity``. Use the reset header (time
        until full) to see how soon the burst is available again.
        """
        value = self.limit - (self.capacity - self.level())
        return max(0, min(math.floor(self.limit), math.floor(value + EPSILON)))

    def _refill(self) -> None:
        now = self._clock()
        if self._updated is not None and now > self._updated:
            refill = (now - self._updated) * self.rate
            self._level = min(self.capacity, self._level + refill)
        if self._updated is None or now > self._updated:
            self._updated = now


def format_go_duration(seconds: float) -> str:
    """Format a duration the way Go's ``time.Duration.String`` does.

    This is the format of OpenAI's ``x-ratelimit-reset-*`` headers.

    Parameters
    ----------
    seconds : float
        The duration; negative values format as ``"0s"``.

    Returns
    -------
    str
        For example ``"12ms"``, ``"1s"``, ``"6m0s"``, ``"1m30.5s"``,
        ``"1h0m0s"``.
    """
    nanos = round(seconds * 1e9)
    if nanos <= 0:
        return "0s"
    if nanos < 1_000:
        return f"{nanos}ns"
    if nanos < 1_000_000:
        return _decimal(nanos, 1_000) + "µs"
    if nanos < 1_000_000_000:
        return _decimal(nanos, 1_000_000) + "ms"

    hours, rest = divmod(nanos, 3_600 * 10**9)
    minutes, rest = divmod(rest, 60 * 10**9)
    text = _decimal(rest, 10**9) + "s"
    if hours:
        return f"{hours}h{minutes}m{text}"
    if minutes:
        return f"{minutes}m{text}"
    return text


def format_rfc3339(unix_seconds: float) -> str:
    """Format a Unix time as an RFC 3339 UTC timestamp, rounded up to the second.

    This is the format of Anthropic's ``anthropic-ratelimit-*-reset``
    headers. Rounding up means a client that waits until the stamp never
    comes back too early.

    Parameters
    ----------
    unix_seconds : float
        Seconds since the Unix epoch.

    Returns
    -------
    str
        For example ``"2026-12-03T16:20:05Z"``.
    """
    whole = math.ceil(unix_seconds - EPSILON)
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(whole))


def ceil_ms(seconds: float) -> float:
    """Round a wait up to whole milliseconds, so a header never says too little."""
    return math.ceil(seconds * 1000 - 1e-6) / 1000


def whole_seconds(seconds: float) -> int:
    """A ``retry-after`` value: whole seconds, rounded up, at least 1."""
    return max(1, math.ceil(seconds - EPSILON))


def format_number(value: float) -> str:
    """``60000.0`` as ``"60000"``, ``1.5`` as ``"1.5"``."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _decimal(value: int, unit: int) -> str:
    whole, fraction = divmod(value, unit)
    if not fraction:
        return str(whole)
    width = len(str(unit)) - 1
    return f"{whole}.{fraction:0{width}d}".rstrip("0")


def longest_wait(
    checks: Iterable[tuple[str, Bucket | None, float]],
) -> tuple[float, str, Bucket, float] | None:
    """The limit that keeps a request waiting longest, or None if all admit it.

    Parameters
    ----------
    checks : iterable of (name, bucket, amount)
        Each limit the request needs `amount` of; a None bucket is unlimited.

    Returns
    -------
    tuple of (wait, name, bucket, amount), or None
        The wait is rounded up to whole milliseconds.
    """
    waits = []
    for name, bucket, amount in checks:
        if bucket is None:
            continue
        wait = bucket.wait_time(amount)
        if wait > 0:
            waits.append((ceil_ms(wait), name, bucket, amount))
    if not waits:
        return None
    return max(waits, key=lambda item: item[0])
