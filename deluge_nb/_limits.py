"""The limiter: requests/min, tokens/min and concurrency, shared per API key.

Each per-minute limit is one ``RateBucket`` with two rules, both of which
must allow a request before it is sent:

- pacing: the limit's rate spread evenly, with at most ``burst_seconds`` of
  it available at once (a generic cell rate algorithm: ``tat`` is the time
  at which everything admitted so far would have been paid off at the
  limit's rate). Providers enforce per-minute limits over much shorter
  windows, so a full minute of budget at start-up would draw 429s.
- the window: the amounts admitted in the last 60 s, plus this one, stay
  within the limit, so no rolling minute ever exceeds it.

A request reserves its estimated input tokens plus ``max_tokens`` (what
OpenAI counts on arrival); ``Limiter.release`` corrects the reservation to
the actual usage. A 429 pauses every request on the limiter until the
server's wait has passed. All time is read through ``clock``, so the rate
rules can be tested by moving a fake clock instead of sleeping.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ._headers import RateLimitHeaders, ServerLimit

logger = logging.getLogger(__name__)

WINDOW_S = 60.0
# A request admitted at t reaches the server a little later (a connection
# to open, a busy loop): measured at the server, a burst admitted a minute
# ago arrived up to ~60 ms late, so the window held it that much too short
# and the next minute's burst overlapped it. Each admission therefore
# counts for this much longer than a minute.
WINDOW_SLACK_S = 0.25
DEFAULT_BURST_S = 1.0
DEFAULT_MAX_CONCURRENT = 64

# With limits nobody vouched for, the first request goes alone and its
# headers set the pace; the others wait for it at most this long.
PROBE_WAIT_S = 5.0

# After a 429 that no header explains, the rate drops to CUT_FACTOR of
# itself (never below MIN_CUT_FRACTION of the limit) and climbs back by
# RECOVERY_PER_S of the limit each second.
CUT_FACTOR = 0.7
MIN_CUT_FRACTION = 0.05
RECOVERY_PER_S = 0.01


class NeverFitsError(ValueError):
    """A request is larger than a per-minute limit: it can never be sent."""


class _Entry:
    """One admission still inside the window; its amount can be corrected."""

    __slots__ = ("at", "amount", "live")

    def __init__(self, at: float, amount: float) -> None:
        self.at = at
        self.amount = amount
        self.live = False  # True while counted in its bucket's window


class RateBucket:
    """One per-minute limit: pacing plus a rolling 60 s window.

    The limit in force is the lowest of three: the caller's ``ceiling``,
    what the server's headers last reported, and, after 429s from a
    server that reports nothing, a cut rate climbing back by
    ``RECOVERY_PER_S`` of the limit each second (additive increase,
    multiplicative decrease).

    Parameters
    ----------
    per_minute
        The caller's limit; ``math.inf`` for none.
    burst_seconds
        How many seconds' worth of the rate may go out at once.
    explicit
        Whether the caller chose ``per_minute`` (then a server reporting a
        higher limit does not raise it) or it is a registry default (then
        the server's word replaces it).
    """

    def __init__(
        self,
        per_minute: float,
        burst_seconds: float = DEFAULT_BURST_S,
        *,
        explicit: bool = True,
    ) -> None:
        _check_limit(per_minute)
        if burst_seconds <= 0:
            raise ValueError(f"burst_seconds must be > 0, got {burst_seconds!r}")
        self.ceiling = float(per_minute)
        self.explicit = explicit
        self.server_limit: float | None = None
        self.burst_seconds = float(burst_seconds)
        self._cut_to: float | None = None
        self._cut_at = -math.inf
        self._tat = -math.inf
        self._entries: deque[_Entry] = deque()
        self._in_window = 0.0

    @property
    def per_minute(self) -> float:
        """The limit in force, before any 429 cut."""
        if self.server_limit is None:
            return self.ceiling
        if not self.explicit:
            return self.server_limit
        return min(self.ceiling, self.server_limit)

    @property
    def unlimited(self) -> bool:
        return math.isinf(self.per_minute)

    def limit_at(self, now: float) -> float:
        """The limit in force at ``now``, a recovering 429 cut included."""
        target = self.per_minute
        if self._cut_to is None or math.isinf(target):
            return target
        recovered = self._cut_to + (now - self._cut_at) * RECOVERY_PER_S * target
        if recovered >= target:
            self._cut_to = None
            return target
        return recovered

    def fits(self, amount: float) -> bool:
        """Whether ``amount`` can ever be admitted under this limit."""
        return amount <= self.per_minute

    def wait_time(self, amount: float, now: float) -> float:
        """Seconds until ``amount`` may be admitted; 0 means now."""
        if self.unlimited or amount <= 0:
            return 0.0
        if not self.fits(amount):
            return math.inf

        limit = self.limit_at(now)
        cost = amount * WINDOW_S / limit
        tolerance = max(self.burst_seconds, cost)
        # Written as a sum of differences so that an idle bucket gives
        # exactly 0, not a rounding crumb the caller would wait on forever.
        pacing = max(self._tat - now, 0.0) + (cost - tolerance)

        self._expire(now)
        window = 0.0
        excess = self._in_window + amount - limit
        if excess > 1e-9:
            for entry in self._entries:
                excess -= entry.amount
                if excess <= 1e-9:
                    window = entry.at + WINDOW_S + WINDOW_SLACK_S - now
                    break
        wait = max(pacing, window)
        return wait if wait > 1e-9 else 0.0

    def take(self, amount: float, now: float) -> _Entry:
        """Admit ``amount`` now; the returned entry can be corrected later."""
        entry = _Entry(now, float(amount))
        if self.unlimited:
            return entry
        self._tat = max(self._tat, now) + amount * WINDOW_S / self.limit_at(now)
        entry.live = True
        self._entries.append(entry)
        self._in_window += amount
        return entry

    def correct(self, entry: _Entry, actual: float, now: float) -> None:
        """Replace a reservation's amount with what was really used."""
        delta = actual - entry.amount
        if delta == 0 or self.unlimited:
            entry.amount = float(actual)
            return
        self._expire(now)
        if entry.live:
            self._in_window += delta
        self._tat += delta * WINDOW_S / self.limit_at(now)
        entry.amount = float(actual)

    def used(self, now: float) -> float:
        """The amount admitted in the last 60 s."""
        self._expire(now)
        return max(0.0, self._in_window)

    def set_limit(self, per_minute: float) -> None:
        """The caller's new limit (a slider, say); it ends any 429 cut."""
        _check_limit(per_minute)
        before = self.per_minute
        self.ceiling = float(per_minute)
        self.explicit = True
        self._cut_to = None
        if self.per_minute != before:
            self._rebase()

    def _rebase(self) -> None:
        """Recompute the pace as if the limit now in force had always been.

        What was admitted under a looser limit (a registry default before
        the server's headers arrived, a slider moved down) still weighs on
        the server; without this the bucket would forget it and overshoot
        by that much for as long as the job runs.
        """
        if self.unlimited:
            return
        seconds_per_unit = WINDOW_S / self.per_minute
        tat = -math.inf
        for entry in self._entries:
            tat = max(tat, entry.at) + entry.amount * seconds_per_unit
        if self._entries:
            # Past the minute in which they were admitted, old requests
            # weigh on no server; the window rule covers that minute.
            tat = min(tat, self._entries[-1].at + WINDOW_S + WINDOW_SLACK_S)
        self._tat = tat

    def sync(self, server: ServerLimit, sent_at: float, now: float) -> None:
        """Take what the server reported about this limit.

        Its limit becomes the limit in force (never above an explicit
        ceiling). When it has less left than one second of the rate, the
        pace is held back until that much has refilled; ``remaining`` as
        reported applied when the request arrived, near ``sent_at``.
        """
        if server.limit is not None and server.limit != self.server_limit:
            before = self.per_minute
            self.server_limit = server.limit
            self._cut_to = None
            if self.per_minute != before:
                self._rebase()
        if server.remaining is None or self.unlimited:
            return
        limit = self.per_minute
        rate = limit / WINDOW_S
        shortfall = rate * self.burst_seconds - server.remaining
        if shortfall > 0:
            self._tat = max(self._tat, sent_at + shortfall / rate + self.burst_seconds)
        self._expire(now)

    def cut(self, now: float) -> float:
        """Lower the rate after a 429 the headers did not explain."""
        limit = self.limit_at(now)
        if math.isinf(limit):
            return limit
        floor = self.per_minute * MIN_CUT_FRACTION
        self._cut_to = max(floor, limit * CUT_FACTOR)
        self._cut_at = now
        return self._cut_to

    def _expire(self, now: float) -> None:
        expired = False
        while self._entries and self._entries[0].at + WINDOW_S + WINDOW_SLACK_S <= now:
            entry = self._entries.popleft()
            entry.live = False
            self._in_window -= entry.amount
            expired = True
        if not self._entries:
            self._in_window = 0.0
            if expired:
                # The last admission left the minute: none of our own
                # requests weighs on the server any more.
                self._tat = min(self._tat, now)


def _check_limit(value: float) -> None:
    if not value > 0:
        raise ValueError(f"a per-minute limit must be > 0, got {value!r}")


_LABELS = {
    "requests": "requests/min",
    "tokens": "tokens/min",
    "input_tokens": "input tokens/min",
    "output_tokens": "output tokens/min",
}


@dataclass
class Reservation:
    """What one admitted request holds until it is released."""

    amounts: dict[str, float]
    entries: dict[str, _Entry]
    sent_at: float
    released: bool = False

    @property
    def tokens(self) -> float:
        return self.amounts["tokens"]


@dataclass(frozen=True)
class LimiterSnapshot:
    """The limiter's state at one moment, for gauges and stats.

    ``max_*`` are the limits in force (after what the server reported and
    any 429 cut); ``configured_*`` are the caller's. ``math.inf`` means no
    limit.
    """

    max_requests_per_minute: float
    max_tokens_per_minute: float
    max_input_tokens_per_minute: float
    max_output_tokens_per_minute: float
    configured_requests_per_minute: float
    configured_tokens_per_minute: float
    max_concurrent_requests: int
    requests_last_minute: float
    tokens_last_minute: float
    input_tokens_last_minute: float
    output_tokens_last_minute: float
    in_flight: int
    paused_for_s: float
    reason: str


class Limiter:
    """Admission control for one API key and model group.

    Parameters
    ----------
    max_requests_per_minute, max_tokens_per_minute
        Per-minute limits; ``math.inf`` for none.
    max_concurrent_requests
        Requests in flight at once.
    max_input_tokens_per_minute, max_output_tokens_per_minute
        For providers that limit input and output apart (Anthropic).
    burst_seconds
        Seconds' worth of each rate that may go out at once.
    explicit
        Whether the caller chose the per-minute limits; if not, limits the
        server reports replace them.
    clock
        Monotonic time in seconds; the one seam through which time is read.
    """

    def __init__(
        self,
        max_requests_per_minute: float,
        max_tokens_per_minute: float,
        max_concurrent_requests: int = DEFAULT_MAX_CONCURRENT,
        *,
        max_input_tokens_per_minute: float = math.inf,
        max_output_tokens_per_minute: float = math.inf,
        burst_seconds: float = DEFAULT_BURST_S,
        explicit: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        limits = {
            "requests": max_requests_per_minute,
            "tokens": max_tokens_per_minute,
            "input_tokens": max_input_tokens_per_minute,
            "output_tokens": max_output_tokens_per_minute,
        }
        self.buckets = {
            name: RateBucket(limit, burst_seconds, explicit=explicit)
            for name, limit in limits.items()
        }
        self._check_concurrency(max_concurrent_requests)
        self.max_concurrent_requests = int(max_concurrent_requests)
        self.clock = clock
        self.in_flight = 0
        self._paused_until = -math.inf
        self._pause_reason = ""
        self._reason = "idle"
        self._headers_seen = False
        self._waiting = False  # a request is parked in acquire()
        # With limits nobody vouched for (registry defaults), the first
        # request goes alone: its response's headers tell the real limits
        # before a burst sized by a guess can draw a herd of 429s.
        self.probing = not explicit
        self._probe_sent_at = -math.inf
        # Created lazily on the loop that uses the limiter.
        self._admission: asyncio.Lock | None = None
        self._changed: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def requests(self) -> RateBucket:
        return self.buckets["requests"]

    @property
    def tokens(self) -> RateBucket:
        return self.buckets["tokens"]

    # -- admission -------------------------------------------------------

    def check_fits(self, tokens: float, **amounts: float) -> str | None:
        """Why a request of ``tokens`` can never be admitted, or None."""
        for name, amount in {"tokens": tokens, **amounts}.items():
            bucket = self.buckets[name]
            if not bucket.fits(amount):
                what = "input estimate + max_tokens" if name == "tokens" else name
                option = f"max_{name}_per_minute"
                server = bucket.server_limit
                if server is not None and server == bucket.per_minute:
                    origin = "as the server's rate-limit headers report it"
                elif bucket.explicit:
                    origin = (
                        f"set by {option} in this or an earlier call: limits stay "
                        "in force per API key and model until changed"
                    )
                else:
                    origin = "the model's registered default"
                return (
                    f"request needs {amount:.0f} tokens ({what}) but the limit is "
                    f"{bucket.per_minute:.0f} {_LABELS[name]} ({origin}); it can "
                    f"never be sent. Raise {option}, lower max_tokens or shorten "
                    "the prompt."
                )
        return None

    async def acquire(
        self,
        tokens: float,
        *,
        input_tokens: float = 0.0,
        output_tokens: float = 0.0,
    ) -> Reservation:
        """Wait until a request may be sent, then reserve it.

        ``tokens`` is the input estimate plus ``max_tokens``;
        ``input_tokens`` and ``output_tokens`` count against the input and
        output limits where a provider has them. Requests are admitted in
        arrival order. Raises ``NeverFitsError`` for a request that can
        never fit: at once, or as soon as a limit drops below it while it
        waits (a server's headers, a slider, another call's limits), so
        that it never holds up the requests behind it.
        """
        amounts = {
            "requests": 1.0,
            "tokens": float(tokens),
            "input_tokens": float(input_tokens),
            "output_tokens": float(output_tokens),
        }
        admission, changed = self._primitives()
        async with admission:
            while True:
                problem = self.check_fits(
                    tokens, input_tokens=input_tokens, output_tokens=output_tokens
                )
                if problem:
                    raise NeverFitsError(problem)
                now = self.clock()
                wait = self._wait_time(amounts, now)
                if wait == 0.0:
                    entries = {
                        name: bucket.take(amounts[name], now)
                        for name, bucket in self.buckets.items()
                    }
                    if self.probing and self.in_flight == 0:
                        self._probe_sent_at = now
                    self.in_flight += 1
                    self._reason = "sending"
                    return Reservation(amounts, entries, now)

                changed.clear()
                self._waiting = True
                try:
                    await asyncio.wait_for(
                        changed.wait(), None if math.isinf(wait) else wait
                    )
                except asyncio.TimeoutError:
                    pass
                finally:
                    self._waiting = False

    def release(
        self,
        reservation: Reservation,
        actual_tokens: float | None = None,
        *,
        actual_input_tokens: float | None = None,
        actual_output_tokens: float | None = None,
    ) -> None:
        """Free the request's slot and correct its reservation to actual use.

        A None leaves that reservation as it was (the server may have
        counted it). Safe to call more than once; only the first counts.
        """
        if reservation.released:
            return
        reservation.released = True
        self.in_flight -= 1
        self.probing = False
        now = self.clock()
        actual = {
            "tokens": actual_tokens,
            "input_tokens": actual_input_tokens,
            "output_tokens": actual_output_tokens,
        }
        for name, value in actual.items():
            if value is not None:
                self.buckets[name].correct(reservation.entries[name], value, now)
        if self._waiting:  # the common case at full speed is nobody waiting
            self._notify()

    def observe(self, headers: RateLimitHeaders, sent_at: float) -> None:
        """Re-sync the buckets with a response's rate-limit headers."""
        if self.probing:
            self.probing = False
            self._notify()
        if not headers.limits:
            return
        now = self.clock()
        self._headers_seen = self._headers_seen or headers.any_limit
        for name, server in headers.limits.items():
            self.buckets[name].sync(server, sent_at, now)
        self._notify()

    def on_rate_limited(
        self,
        wait_s: float,
        dimension: str | None = None,
        *,
        sent_at: float | None = None,
    ) -> None:
        """A 429: hold everyone for ``wait_s``; without headers, slow down.

        Only the first 429 of a round cuts the rate: one that answers a
        request sent before the last cut (``sent_at``) says nothing about
        the rate since. Without ``sent_at``, one cut per ``wait_s`` or 1 s.
        """
        now = self.clock()
        self.pause(wait_s, "429")
        if self._headers_seen:
            return
        names = [dimension] if dimension in self.buckets else ["requests", "tokens"]
        for name in names:
            bucket = self.buckets[name]
            if sent_at is not None:
                if sent_at <= bucket._cut_at:
                    continue
            elif now - bucket._cut_at < max(wait_s, 1.0):
                continue
            new = bucket.cut(now)
            if not math.isinf(new):
                logger.info("429 without limit headers: %s lowered to %.0f", name, new)

    def pause(self, seconds: float, reason: str = "429") -> None:
        """Hold every request on this limiter for ``seconds`` from now."""
        until = self.clock() + seconds
        if until > self._paused_until:
            self._paused_until = until
            self._pause_reason = reason
            logger.info("pausing requests for %.1f s after %s", seconds, reason)
        self._notify()

    def set_limits(
        self,
        *,
        max_requests_per_minute: float | None = None,
        max_tokens_per_minute: float | None = None,
        max_concurrent_requests: int | None = None,
        max_input_tokens_per_minute: float | None = None,
        max_output_tokens_per_minute: float | None = None,
    ) -> None:
        """Change limits while requests run; the next admission uses them.

        Callable from any thread (a slider's callback, say).
        """
        changes = {
            "requests": max_requests_per_minute,
            "tokens": max_tokens_per_minute,
            "input_tokens": max_input_tokens_per_minute,
            "output_tokens": max_output_tokens_per_minute,
        }
        for name, value in changes.items():
            if value is not None:
                self.buckets[name].set_limit(value)
        if max_concurrent_requests is not None:
            self._check_concurrency(max_concurrent_requests)
            self.max_concurrent_requests = int(max_concurrent_requests)
        self._notify()

    def snapshot(self) -> LimiterSnapshot:
        now = self.clock()
        b = self.buckets
        paused = max(0.0, self._paused_until - now)
        reason = self._reason
        if paused > 0:
            reason = f"cooling down {math.ceil(paused)} s after {self._pause_reason}"
        elif self.in_flight == 0 and reason == "sending":
            reason = "idle"
        return LimiterSnapshot(
            max_requests_per_minute=b["requests"].limit_at(now),
            max_tokens_per_minute=b["tokens"].limit_at(now),
            max_input_tokens_per_minute=b["input_tokens"].limit_at(now),
            max_output_tokens_per_minute=b["output_tokens"].limit_at(now),
            configured_requests_per_minute=b["requests"].ceiling,
            configured_tokens_per_minute=b["tokens"].ceiling,
            max_concurrent_requests=self.max_concurrent_requests,
            requests_last_minute=b["requests"].used(now),
            tokens_last_minute=b["tokens"].used(now),
            input_tokens_last_minute=b["input_tokens"].used(now),
            output_tokens_last_minute=b["output_tokens"].used(now),
            in_flight=self.in_flight,
            paused_for_s=paused,
            reason=reason,
        )

    # -- internals -------------------------------------------------------

    def _wait_time(self, amounts: dict[str, float], now: float) -> float:
        """0 if a request may go now, else seconds (inf: until notified)."""
        paused = self._paused_until - now
        if paused > 0:
            self._reason = (
                f"cooling down {math.ceil(paused)} s after {self._pause_reason}"
            )
            return paused
        if self.in_flight >= self.max_concurrent_requests:
            self._reason = "waiting on concurrency"
            return math.inf
        if self.probing and self.in_flight > 0:
            # A first request that hangs must not hold the job for a whole
            # timeout: after PROBE_WAIT_S the registry's limits will do.
            left = self._probe_sent_at + PROBE_WAIT_S - now
            if left > 0:
                self._reason = "waiting for the first response to learn the limits"
                return left
            self.probing = False
        longest, slowest = 0.0, ""
        for name, bucket in self.buckets.items():
            wait = bucket.wait_time(amounts[name], now)
            if wait > longest:
                longest, slowest = wait, name
        if longest > 0:
            self._reason = f"waiting on {_LABELS[slowest]}"
        return longest

    def _primitives(self) -> tuple[asyncio.Lock, asyncio.Event]:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._admission is None or self._changed is None:
            self._loop = loop
            self._admission = asyncio.Lock()
            self._changed = asyncio.Event()
        return self._admission, self._changed

    def _notify(self) -> None:
        """Wake the request waiting for admission; callable from any thread."""
        loop, changed = self._loop, self._changed
        if loop is None or changed is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            changed.set()
        else:
            loop.call_soon_threadsafe(changed.set)

    @staticmethod
    def _check_concurrency(value: int) -> None:
        if value < 1:
            raise ValueError(f"max_concurrent_requests must be >= 1, got {value!r}")


# -- the process-wide registry ------------------------------------------

_registry: dict[tuple[str, str, str], Limiter] = {}
_registry_lock = threading.Lock()


def limiter_key(base_url: str, api_key: str | None, group: str) -> tuple[str, str, str]:
    """The key one budget is shared under; the API key enters only hashed."""
    digest = hashlib.sha256((api_key or "").encode()).hexdigest()[:16]
    return (base_url, digest, group)


def forget_limiters(model: str) -> None:
    """Drop the shared limiters of every group that includes ``model``.

    The next call then starts from the model's registry entry instead of
    the limits an earlier call left in force. A job already running keeps
    its limiter.
    """
    with _registry_lock:
        for key in [k for k in _registry if model in k[2].split("+")]:
            del _registry[key]


def get_limiter(
    key: tuple[str, str, str],
    *,
    defaults: Mapping[str, float],
    given: Mapping[str, float | None],
    max_concurrent_requests: int | None,
) -> Limiter:
    """The limiter for ``key``, created on first use.

    ``defaults`` are the registry's per-minute limits by dimension
    (``requests``, ``tokens``, ``input_tokens``, ``output_tokens``);
    ``given`` are the caller's, None where not given. A limit the caller
    gave is kept as a ceiling the server's headers cannot raise; a default
    yields to what the server reports. A later call that gives limits
    updates the shared limiter to them.
    """
    with _registry_lock:
        limiter = _registry.get(key)
        if limiter is None:
            value = {
                name: given.get(name) or defaults.get(name, math.inf)
                for name in _LABELS
            }
            limiter = Limiter(
                value["requests"],
                value["tokens"],
                max_concurrent_requests or DEFAULT_MAX_CONCURRENT,
                max_input_tokens_per_minute=value["input_tokens"],
                max_output_tokens_per_minute=value["output_tokens"],
            )
            for name, bucket in limiter.buckets.items():
                bucket.explicit = given.get(name) is not None
            limiter.probing = not any(v is not None for v in given.values())
            _registry[key] = limiter
            return limiter

        limiter.set_limits(
            max_requests_per_minute=given.get("requests"),
            max_tokens_per_minute=given.get("tokens"),
            max_input_tokens_per_minute=given.get("input_tokens"),
            max_output_tokens_per_minute=given.get("output_tokens"),
            max_concurrent_requests=max_concurrent_requests,
        )
        return limiter
