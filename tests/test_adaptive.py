"""Limits that learn: rate-limit headers, 429 back-off and recovery (K06)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator

import pytest

from deluge_nb import LLMClient, _limits, register_model
from deluge_nb._headers import ServerLimit, parse_rate_limit_headers
from deluge_nb._limits import CUT_FACTOR, RECOVERY_PER_S, Limiter, RateBucket
from deluge_nb.sim import serve

NOW = 1_796_313_600.0  # 2026-12-03T16:00:00Z


@pytest.mark.parametrize(
    ("headers", "dimension", "expected"),
    [
        (
            {
                "x-ratelimit-limit-requests": "500",
                "x-ratelimit-remaining-requests": "499",
                "x-ratelimit-reset-requests": "120ms",
            },
            "requests",
            ServerLimit(500, 499, 0.12),
        ),
        (
            {
                "x-ratelimit-limit-tokens": "200000",
                "x-ratelimit-remaining-tokens": "199744",
                "x-ratelimit-reset-tokens": "6m0s",
            },
            "tokens",
            ServerLimit(200000, 199744, 360.0),
        ),
        (
            {"x-ratelimit-reset-tokens": "1m30.5s"},
            "tokens",
            ServerLimit(None, None, 90.5),
        ),
        (
            {
                "anthropic-ratelimit-input-tokens-limit": "30000",
                "anthropic-ratelimit-input-tokens-remaining": "29000",
                "anthropic-ratelimit-input-tokens-reset": "2026-12-03T16:00:12Z",
            },
            "input_tokens",
            ServerLimit(30000, 29000, 12.0),
        ),
        (
            {
                "anthropic-ratelimit-requests-limit": "50",
                "anthropic-ratelimit-requests-remaining": "0",
                "anthropic-ratelimit-requests-reset": "2026-12-03T16:00:01.5+00:00",
            },
            "requests",
            ServerLimit(50, 0, 1.5),
        ),
    ],
)
def test_rate_limit_headers_real_values(
    headers: dict[str, str], dimension: str, expected: ServerLimit
) -> None:
    parsed = parse_rate_limit_headers(headers, NOW)
    got = parsed.limits[dimension]
    assert got.limit == expected.limit
    assert got.remaining == expected.remaining
    if expected.reset_s is None:
        assert got.reset_s is None
    else:
        assert got.reset_s == pytest.approx(expected.reset_s)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"x-ratelimit-limit-requests": "lots"},
        {"x-ratelimit-limit-requests": "0"},
        {"x-ratelimit-limit-tokens": "nan", "x-ratelimit-remaining-tokens": "inf"},
        {"x-ratelimit-reset-requests": "soon"},
        {"anthropic-ratelimit-input-tokens-reset": "yesterday"},
        {"anthropic-ratelimit-input-tokens-reset": "2026-12-03T16:00:12"},  # no zone
        {"anthropic-ratelimit-output-tokens-limit": "-5"},
        # Below one request or token a limit is junk, not a limit.
        {"x-ratelimit-limit-requests": "0.5"},
        {"x-ratelimit-limit-tokens": "1e-300"},
        # Azure has been seen sending -1 and 0; the remaining count that
        # comes with them is junk too and must not throttle the job.
        {"x-ratelimit-limit-requests": "-1", "x-ratelimit-remaining-requests": "0"},
        {
            "x-ratelimit-limit-requests": "0",
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-limit-tokens": "0",
            "x-ratelimit-remaining-tokens": "0",
        },
        {
            "anthropic-ratelimit-requests-limit": "0",
            "anthropic-ratelimit-requests-remaining": "0",
        },
    ],
)
def test_junk_headers_are_ignored(headers: dict[str, str]) -> None:
    parsed = parse_rate_limit_headers(headers, NOW)
    assert not parsed.any_limit
    for server in parsed.limits.values():
        assert server.reset_s is None and server.remaining is None


def test_reset_in_the_past_is_zero_not_negative() -> None:
    parsed = parse_rate_limit_headers(
        {"anthropic-ratelimit-output-tokens-reset": "2026-12-03T15:59:00Z"}, NOW
    )
    assert parsed.limits["output_tokens"].reset_s == 0.0


def test_anthropic_combined_tokens_header_is_not_a_combined_limit() -> None:
    # It repeats the tighter of input and output, which have buckets of
    # their own; read as prompt + max_tokens it would throttle too hard.
    parsed = parse_rate_limit_headers(
        {
            "anthropic-ratelimit-tokens-limit": "8000",
            "anthropic-ratelimit-output-tokens-limit": "8000",
        },
        NOW,
    )
    assert "tokens" not in parsed.limits
    assert parsed.limits["output_tokens"].limit == 8000


def test_retry_after_is_read_with_the_limits() -> None:
    parsed = parse_rate_limit_headers({"retry-after-ms": "250"}, NOW)
    assert parsed.retry_after_s == 0.25


def test_server_limit_lowers_an_explicit_ceiling_but_never_raises_it() -> None:
    bucket = RateBucket(1200, explicit=True)
    bucket.sync(ServerLimit(limit=600), sent_at=0.0, now=0.0)
    assert bucket.per_minute == 600
    bucket.sync(ServerLimit(limit=5000), sent_at=1.0, now=1.0)
    assert bucket.per_minute == 1200


def test_registry_default_yields_to_the_server() -> None:
    bucket = RateBucket(500, explicit=False)
    bucket.sync(ServerLimit(limit=10_000), sent_at=0.0, now=0.0)
    assert bucket.per_minute == 10_000


def test_little_remaining_holds_the_pace_back() -> None:
    bucket = RateBucket(600, burst_seconds=1.0)  # 10 per second
    assert bucket.wait_time(1, 0.0) == 0.0
    bucket.sync(ServerLimit(limit=600, remaining=0), sent_at=0.0, now=0.0)
    assert bucket.wait_time(1, 0.0) == pytest.approx(1.0 + 0.1, abs=0.01)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_429_without_headers_cuts_once_per_burst_then_recovers() -> None:
    clock = FakeClock()
    limiter = Limiter(1000, math.inf, 10, clock=clock)
    limiter.on_rate_limited(1.0)
    limiter.on_rate_limited(1.0)  # the same burst: no second cut
    assert limiter.snapshot().max_requests_per_minute == pytest.approx(
        1000 * CUT_FACTOR
    )

    clock.now += 5.0
    recovered = 1000 * CUT_FACTOR + 5.0 * RECOVERY_PER_S * 1000
    assert limiter.snapshot().max_requests_per_minute == pytest.approx(recovered)
    clock.now += 1000.0
    assert limiter.snapshot().max_requests_per_minute == 1000


def test_429_with_limit_headers_seen_does_not_cut() -> None:
    clock = FakeClock()
    limiter = Limiter(1000, math.inf, 10, clock=clock)
    limiter.observe(
        parse_rate_limit_headers({"x-ratelimit-limit-requests": "800"}, NOW), 100.0
    )
    limiter.on_rate_limited(1.0)
    assert limiter.snapshot().max_requests_per_minute == 800


async def test_k06_retry_after_30_holds_every_request_on_the_key() -> None:
    clock = FakeClock()
    limiter = Limiter(math.inf, math.inf, 10, clock=clock)
    limiter.on_rate_limited(30.0)
    waiters = [asyncio.ensure_future(limiter.acquire(1)) for _ in range(3)]
    await asyncio.sleep(0.05)
    assert not any(w.done() for w in waiters)
    assert limiter.snapshot().reason == "cooling down 30 s after 429"

    clock.now += 29.9
    limiter.set_limits()  # wake the waiter to re-read the clock
    await asyncio.sleep(0.05)
    assert not any(w.done() for w in waiters)

    clock.now += 0.1
    limiter.set_limits()
    reservations = await asyncio.wait_for(asyncio.gather(*waiters), timeout=1)
    assert len(reservations) == 3


@pytest.fixture(scope="module")
def sim() -> Iterator[object]:
    with serve() as server:
        yield server


def test_k06_retry_after_ms_end_to_end(sim: object) -> None:
    register_model("sim-k06", base_url=sim.base_url)  # type: ignore[attr-defined]
    sim.reset_stats()  # type: ignore[attr-defined]
    # One at a time, so the others are queued when the 429 comes back.
    client = LLMClient(
        "sim-k06", progress=None, max_attempts=1, max_concurrent_requests=1
    )
    first = "[[sim:status=429]][[sim:retry_after=0.5]]x"
    started = time.monotonic()
    results = client.process_prompts_sync(
        [first] + [f"[[sim:echo]]ok{i}" for i in range(3)]
    )
    elapsed = time.monotonic() - started

    admitted = sorted(sim.stats()["admitted_times"])  # type: ignore[attr-defined]
    # retry-after says 1 s (whole seconds), retry-after-ms 500: the finer wins.
    assert len(admitted) == 3
    assert 0.5 <= elapsed < 0.95
    assert admitted[-1] - admitted[0] < 0.3  # the three went together after it
    assert [r.response for r in results[1:]] == ["ok0", "ok1", "ok2"]


@pytest.mark.parametrize("headers", [True, False], ids=["headers", "no-headers"])
def test_overestimated_limits_are_learned(headers: bool) -> None:
    with serve(requests_per_minute=6000, rate_limit_headers=headers) as server:
        register_model("sim-over", base_url=server.base_url)
        client = LLMClient(
            "sim-over",
            max_requests_per_minute=12_000,  # twice the truth
            max_tokens=20,
            progress=None,
        )
        results = client.process_prompts_sync([f"{i}" for i in range(400)])
        stats = server.stats()

    assert [r.error for r in results if r.error] == []
    learned = client.limiter.snapshot().max_requests_per_minute
    if headers:
        assert learned == 6000
        assert stats["rate_limited"] <= 0.05 * 400
    else:
        assert stats["rate_limited"] > 0
        assert learned < 12_000


def test_a_lower_server_limit_weighs_what_was_already_admitted() -> None:
    # Admitted under a registry default of 1M tokens/min, then the server
    # says 60k: those 2,000 tokens are 2 s of the real rate, not 0.12 s.
    bucket = RateBucket(1_000_000, burst_seconds=1.0, explicit=False)
    for i in range(5):
        bucket.take(400, 10.0 + i * 0.01)
    assert bucket.wait_time(400, 10.1) == 0.0
    bucket.sync(ServerLimit(limit=60_000), sent_at=10.0, now=10.1)
    # Replayed at 1,000 tokens/s the five end at 12.0 s; the next 400 may
    # go when that debt is within the 1 s burst: 12.0 + 0.4 - 1.0.
    assert bucket.wait_time(400, 10.1) == pytest.approx(12.0 + 0.4 - 1.0 - 10.1)


def test_a_slider_moved_down_slows_at_once() -> None:
    bucket = RateBucket(6000, burst_seconds=1.0)
    for i in range(50):
        bucket.take(1, i * 0.01)
    bucket.set_limit(600)  # 10 a second: 50 admitted are 5 s of it
    assert bucket.wait_time(1, 0.5) == pytest.approx(5.0 - 1.0 + 0.1 - 0.5, abs=0.05)


async def test_unvouched_limits_send_one_request_until_the_server_answers() -> None:
    limiter = Limiter(600, 1_000_000, 10, explicit=False)
    first = await limiter.acquire(100)
    second = asyncio.ensure_future(limiter.acquire(100))
    await asyncio.sleep(0.05)
    assert not second.done()
    assert "first response" in limiter.snapshot().reason
    limiter.observe(
        parse_rate_limit_headers({"x-ratelimit-limit-tokens": "60000"}, NOW), 0.0
    )
    await asyncio.wait_for(second, timeout=1)
    assert limiter.tokens.per_minute == 60_000
    limiter.release(first)
    limiter.release(second.result())


async def test_unvouched_limits_wait_for_a_hung_first_request_only_briefly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_limits, "PROBE_WAIT_S", 0.3)
    limiter = Limiter(600, 1_000_000, 8, explicit=False)
    first = await limiter.acquire(10)
    second = asyncio.ensure_future(limiter.acquire(10))
    await asyncio.sleep(0.1)
    # The first response's headers would tell the real limits: wait for it.
    assert not second.done()
    assert "learn the limits" in limiter.snapshot().reason

    # But not for long: a first request that hangs holds nobody back for
    # its whole timeout.
    reservation = await asyncio.wait_for(second, timeout=2)
    assert limiter.in_flight == 2
    limiter.release(first)
    limiter.release(reservation)


def test_registry_defaults_learn_the_real_limits_without_a_429_herd() -> None:
    words = " ".join(f"w{i}" for i in range(250))
    with serve(
        requests_per_minute=3000, tokens_per_minute=300_000, latency_s=0.2
    ) as server:
        # No limits given: the registry's 600 rpm / 1M tpm guess applies
        # until the first response's headers say otherwise.
        register_model("sim-guess", base_url=server.base_url, tokenizer="o200k_base")
        client = LLMClient("sim-guess", max_tokens=50, progress=None)
        results = client.process_prompts_sync([f"{i} {words}" for i in range(80)])
        stats = server.stats()
    assert all(r.error is None for r in results)
    assert client.limiter.snapshot().max_tokens_per_minute == 300_000
    assert stats["rate_limited"] <= 2


def test_only_429s_for_requests_sent_after_the_last_cut_cut_again() -> None:
    clock = FakeClock()
    limiter = Limiter(1000, math.inf, 10, clock=clock)
    limiter.on_rate_limited(0.1, sent_at=99.0)
    clock.now += 5.0  # long after, but answering a request sent before the cut
    limiter.on_rate_limited(0.1, sent_at=99.5)
    cut_once = 1000 * CUT_FACTOR + 5.0 * RECOVERY_PER_S * 1000
    assert limiter.snapshot().max_requests_per_minute == pytest.approx(cut_once)
    limiter.on_rate_limited(0.1, sent_at=104.0)  # sent after the cut
    assert limiter.snapshot().max_requests_per_minute == pytest.approx(
        cut_once * CUT_FACTOR
    )
