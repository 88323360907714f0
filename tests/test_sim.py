"""Tests of deluge_nb.sim: real HTTP against a server in a thread.

Rate-limit tests inject a frozen clock into the server, so the bucket
arithmetic is exact and nothing sleeps to wait for refill; only the latency
tests really sleep, and briefly.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict

from deluge_nb._tokens import count_message_tokens, count_text_tokens
from deluge_nb.sim import SimConfig, SimServer, make_app, serve, serve_async
from deluge_nb.sim._app import Bucket, format_go_duration

REPO = Path(__file__).resolve().parents[1]

Reply = tuple[int, Mapping[str, str], dict[str, Any]]


class FakeClock:
    """A clock that only moves when a test moves it."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def user(content: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": content}]


async def post(
    session: aiohttp.ClientSession,
    sim: SimServer,
    content: str = "Say something.",
    **body: Any,
) -> Reply:
    payload = {"model": "sim", "messages": user(content), **body}
    url = f"{sim.base_url}/chat/completions"
    async with session.post(url, json=payload) as response:
        return response.status, CIMultiDict(response.headers), await response.json()


def prompt_tokens(content: str, tokenizer: str | None = None) -> int:
    return count_message_tokens(user(content), tokenizer)


# --- replies -----------------------------------------------------------------


async def test_reply_has_openai_shape_and_is_deterministic() -> None:
    with serve(seed=7, tokenizer=None) as sim, serve(seed=8, tokenizer=None) as other:
        async with aiohttp.ClientSession() as session:
            status, headers, first = await post(session, sim, "Hello there")
            _, _, again = await post(session, sim, "Hello there")
            _, _, other_seed = await post(session, other, "Hello there")
            _, _, other_prompt = await post(session, sim, "Hello again")

    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    assert first["object"] == "chat.completion"
    assert first["id"].startswith("chatcmpl-")
    assert first["model"] == "sim"
    assert isinstance(first["created"], int)
    choice = first["choices"][0]
    assert choice["message"]["role"] == "assistant"
    content = choice["message"]["content"]
    assert choice["finish_reason"] == "stop"

    usage = first["usage"]
    assert usage["prompt_tokens"] == prompt_tokens("Hello there")
    assert usage["completion_tokens"] == count_text_tokens(content, None)
    assert 1 <= usage["completion_tokens"] <= 60
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["prompt_tokens_details"] == {"cached_tokens": 0}
    assert usage["completion_tokens_details"] == {"reasoning_tokens": 0}

    assert again["choices"][0]["message"]["content"] == content
    assert other_seed["choices"][0]["message"]["content"] != content
    assert other_prompt["choices"][0]["message"]["content"] != content


async def test_max_tokens_caps_the_reply_with_finish_reason_length() -> None:
    with serve(tokenizer=None) as sim:
        async with aiohttp.ClientSession() as session:
            _, _, capped = await post(session, sim, "Go on", max_tokens=3)
            _, _, also = await post(session, sim, "Go on", max_completion_tokens=3)

    for reply in (capped, also):
        assert reply["choices"][0]["finish_reason"] == "length"
        assert 0 <= reply["usage"]["completion_tokens"] <= 3


@pytest.mark.skipif(
    not os.environ.get("TIKTOKEN_CACHE_DIR"),
    reason="needs the seeded tiktoken cache (TIKTOKEN_CACHE_DIR)",
)
async def test_reply_lengths_with_o200k_are_5_to_60_tokens() -> None:
    lengths = []
    with serve(tokenizer="o200k_base", default_max_tokens=100) as sim:
        async with aiohttp.ClientSession() as session:
            for i in range(30):
                _, _, reply = await post(session, sim, f"Prompt number {i}")
                content = reply["choices"][0]["message"]["content"]
                tokens = reply["usage"]["completion_tokens"]
                assert tokens == count_text_tokens(content, "o200k_base")
                assert tokens == len(content.split())  # one token per word
                lengths.append(tokens)

    assert min(lengths) >= 5
    assert max(lengths) <= 60
    assert len(set(lengths)) > 5


# --- rate limits -------------------------------------------------------------


async def test_requests_bucket_empty_gives_429_with_retry_headers() -> None:
    clock = FakeClock()
    with serve(
        requests_per_minute=60, burst_seconds=2, tokenizer=None, clock=clock
    ) as sim:
        async with aiohttp.ClientSession() as session:
            first = await post(session, sim)
            second = await post(session, sim)
            status, headers, body = await post(session, sim)

            # A 429 took nothing: one second of refill is exactly one request.
            clock.advance(1.0)
            after_wait = await post(session, sim)
            refused_again = await post(session, sim)

    assert [first[0], second[0]] == [200, 200]
    assert first[1]["x-ratelimit-remaining-requests"] == "59"
    assert second[1]["x-ratelimit-remaining-requests"] == "58"

    assert status == 429
    assert headers["retry-after"] == "1"
    assert headers["retry-after-ms"] == "1000"
    assert headers["x-ratelimit-limit-requests"] == "60"
    assert headers["x-ratelimit-remaining-requests"] == "58"
    assert headers["x-ratelimit-reset-requests"] == "2s"
    assert "x-ratelimit-limit-tokens" not in headers  # tokens are unlimited
    error = body["error"]
    assert error["type"] == "requests"
    assert error["code"] == "rate_limit_exceeded"
    assert "Limit 60, Used 2, Requested 1" in error["message"]
    assert "try again in 1s" in error["message"]

    assert after_wait[0] == 200
    assert after_wait[1]["x-ratelimit-reset-requests"] == "2s"
    assert refused_again[0] == 429
    assert sim.stats()["rate_limited"] == 2


async def test_tokens_are_reserved_on_arrival_and_unused_refunded() -> None:
    clock = FakeClock()
    slow = "[[sim:sleep=0.4]] A slow one"
    with serve(tokens_per_minute=60_000, tokenizer=None, clock=clock) as sim:
        async with aiohttp.ClientSession() as session:
            slow_task = asyncio.create_task(post(session, sim, slow, max_tokens=500))
            await wait_for(lambda: sim.stats()["in_flight"] == 1)
            fast = await post(session, sim, "A fast one", max_tokens=100)
            slow_reply = await slow_task

    limit = 60_000
    slow_prompt = prompt_tokens(slow)
    slow_used = slow_prompt + slow_reply[2]["usage"]["completion_tokens"]
    fast_used = prompt_tokens("A fast one") + fast[2]["usage"]["completion_tokens"]

    # While the slow request runs it holds prompt + max_tokens.
    assert fast[0] == 200
    expected = limit - (slow_prompt + 500) - fast_used
    assert int(fast[1]["x-ratelimit-remaining-tokens"]) == expected

    # Once it completes, only what it used stays taken.
    assert slow_reply[0] == 200
    expected = limit - slow_used - fast_used
    assert int(slow_reply[1]["x-ratelimit-remaining-tokens"]) == expected
    # Capacity 2000 refills at 1000/s: the reset is the used amount in ms.
    reset = f"{slow_used + fast_used}ms"
    assert slow_reply[1]["x-ratelimit-reset-tokens"] == reset


async def test_tokens_bucket_429_reports_used_requested_and_exact_wait() -> None:
    clock = FakeClock()
    with serve(tokens_per_minute=60_000, tokenizer=None, clock=clock) as sim:
        async with aiohttp.ClientSession() as session:
            ok = await post(session, sim, "First", max_tokens=50)
            status, headers, body = await post(session, sim, "Second", max_tokens=1990)

    used = ok[2]["usage"]["total_tokens"]
    requested = prompt_tokens("Second") + 1990
    missing = requested - (2000 - used)  # tokens; they refill at 1000/s
    assert missing > 0
    assert status == 429
    assert body["error"]["type"] == "tokens"
    assert (
        f"Limit 60000, Used {used}, Requested {requested}." in body["error"]["message"]
    )
    assert headers["retry-after-ms"] == str(missing)
    assert headers["retry-after"] == "1"
    assert int(headers["x-ratelimit-remaining-tokens"]) == 60_000 - used
    assert sim.stats()["errors_by_status"] == {429: 1}


async def test_request_above_the_per_minute_limit_is_never_retryable() -> None:
    with serve(tokens_per_minute=100, tokenizer=None) as sim:
        async with aiohttp.ClientSession() as session:
            status, headers, body = await post(session, sim, "Hi", max_tokens=200)

    assert status == 429
    assert body["error"]["type"] == "tokens"
    assert "Request too large" in body["error"]["message"]
    assert headers["x-should-retry"] == "false"
    assert "retry-after" not in headers


async def test_context_length_exceeded_is_400_and_costs_nothing() -> None:
    content = "word " * 40
    tokens = prompt_tokens(content)
    with serve(context_window=50, tokens_per_minute=600, tokenizer=None) as sim:
        async with aiohttp.ClientSession() as session:
            status, headers, body = await post(session, sim, content, max_tokens=40)

    assert tokens + 40 > 50
    assert status == 400
    error = body["error"]
    assert error["code"] == "context_length_exceeded"
    assert error["type"] == "invalid_request_error"
    assert "maximum context length is 50 tokens" in error["message"]
    assert f"you requested {tokens + 40} tokens" in error["message"]
    assert f"({tokens} in the messages, 40 in the completion)" in error["message"]
    assert headers["x-ratelimit-remaining-tokens"] == "600"


async def test_set_limits_and_header_switches() -> None:
    clock = FakeClock()
    with serve(requests_per_minute=60, tokenizer=None, clock=clock) as sim:
        async with aiohttp.ClientSession() as session:
            await post(session, sim)
            await post(session, sim)
            assert (await post(session, sim))[0] == 429

            # An empty bucket stays empty: capacity 2 -> 20, level 0 -> 0.
            sim.set_limits(requests_per_minute=600)
            assert sim.config.requests_per_minute == 600
            assert (await post(session, sim))[0] == 429
            clock.advance(0.1)  # 600/min refills one request per 0.1 s
            status, headers, _ = await post(session, sim)
            assert status == 200
            assert headers["x-ratelimit-limit-requests"] == "600"

            sim.set_limits(requests_per_minute=None, tokens_per_minute=1000)
            status, headers, _ = await post(session, sim)
            assert status == 200
            assert "x-ratelimit-limit-requests" not in headers
            assert headers["x-ratelimit-limit-tokens"] == "1000"

    with pytest.raises(ValueError, match="requests_per_minute"):
        sim.set_limits(requests_per_minute=-1)

    with serve(
        requests_per_minute=60, rate_limit_headers=False, tokenizer=None
    ) as quiet:
        async with aiohttp.ClientSession() as session:
            _, headers, _ = await post(session, quiet)
    assert not [name for name in headers if name.lower().startswith("x-ratelimit")]


# --- validation --------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        (b"{not json", "invalid_json", None),
        (b"[1, 2]", None, None),
        (b'{"model": "sim"}', "missing_required_parameter", "messages"),
        (b'{"model": "sim", "messages": []}', "missing_required_parameter", "messages"),
        (b'{"messages": [{"role": "user", "content": "x"}]}', None, "model"),
        (b'{"model": "sim", "messages": ["hi"]}', "invalid_value", "messages[0]"),
        (
            b'{"model": "sim", "messages": [{"role": "user", "content": "x"}], '
            b'"max_tokens": 0}',
            "invalid_value",
            "max_tokens",
        ),
    ],
)
async def test_malformed_requests_get_openai_style_400(
    body: bytes, code: str | None, param: str | None
) -> None:
    with serve(tokenizer=None) as sim:
        async with aiohttp.ClientSession() as session:
            url = f"{sim.base_url}/chat/completions"
            async with session.post(url, data=body) as response:
                status, payload = response.status, await response.json()

    assert status == 400
    assert payload["error"]["type"] == "invalid_request_error"
    assert payload["error"]["message"]
    if code is not None:
        assert payload["error"]["code"] == code
    if param is not None:
        assert payload["error"]["param"] == param


def test_config_rejects_bad_values_and_unknown_overrides() -> None:
    with pytest.raises(ValueError, match="requests_per_minute"):
        SimConfig(requests_per_minute=0)
    with pytest.raises(ValueError, match="burst_seconds"):
        SimConfig(burst_seconds=0)
    with pytest.raises(TypeError, match="rpm"):
        serve(rpm=60)


# --- directives --------------------------------------------------------------


async def test_sleep_directive_and_configured_latency() -> None:
    with serve(latency_s=0.1, latency_per_output_token_s=0.002, tokenizer=None) as sim:
        async with aiohttp.ClientSession() as session:
            started = time.monotonic()
            _, _, plain = await post(session, sim)
            plain_s = time.monotonic() - started

            started = time.monotonic()
            status, _, _ = await post(session, sim, "[[sim:sleep=0.3]] Hi")
            slept_s = time.monotonic() - started

    assert plain_s >= 0.1 + 0.002 * plain["usage"]["completion_tokens"]
    assert status == 200
    assert slept_s >= 0.4


async def test_status_directive_answers_without_touching_the_budget() -> None:
    clock = FakeClock()
    with serve(requests_per_minute=60, tokenizer=None, clock=clock) as sim:
        async with aiohttp.ClientSession() as session:
            server = await post(session, sim, "[[sim:status=500]] Hi")
            limited = await post(
                session, sim, "Hi [[sim:status=429]][[sim:retry_after=2.5]]"
            )
            default = await post(session, sim, "[[sim:status=429]]")
            bare = await post(
                session, sim, "[[sim:status=429]][[sim:retry_after=none]]"
            )
            unavailable = await post(session, sim, "[[sim:status=529]]")
            ok = [(await post(session, sim))[0] for _ in range(2)]

    assert server[0] == 500
    assert server[2]["error"]["type"] == "server_error"
    assert limited[0] == 429
    assert limited[1]["retry-after"] == "3"
    assert limited[1]["retry-after-ms"] == "2500"
    assert limited[2]["error"]["code"] == "rate_limit_exceeded"
    assert default[1]["retry-after"] == "1"
    assert default[1]["retry-after-ms"] == "1000"
    assert "retry-after" not in bare[1]
    assert "retry-after-ms" not in bare[1]
    assert unavailable[0] == 529
    assert ok == [200, 200]  # the forced answers took no request budget

    stats = sim.stats()
    assert stats["errors_by_status"] == {429: 3, 500: 1, 529: 1}
    assert stats["rate_limited"] == 3
    assert stats["ok"] == 2


async def test_bad_directives_are_400() -> None:
    with serve(tokenizer=None) as sim:
        async with aiohttp.ClientSession() as session:
            replies = [
                await post(session, sim, "[[sim:explode]]"),
                await post(session, sim, "[[sim:status=200]]"),
                await post(session, sim, "[[sim:sleep=soon]]"),
            ]

    for status, _, body in replies:
        assert status == 400
        assert body["error"]["code"] == "invalid_sim_directive"


async def test_echo_directive_returns_the_last_user_message() -> None:
    messages = [
        {"role": "system", "content": "[[sim:status=500]] not read here"},
        {"role": "user", "content": "Earlier [[sim:status=500]]"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "  [[sim:echo]] Bonjour, le monde!\n"},
    ]
    with serve(tokenizer=None) as sim:
        async with aiohttp.ClientSession() as session:
            url = f"{sim.base_url}/chat/completions"
            payload = {"model": "sim", "messages": messages}
            async with session.post(url, json=payload) as response:
                status, reply = response.status, await response.json()
            _, _, cut = await post(
                session, sim, "[[sim:echo]] " + "word " * 30, max_tokens=5
            )

    assert status == 200
    assert reply["choices"][0]["message"]["content"] == "Bonjour, le monde!"
    assert reply["usage"]["completion_tokens"] == count_text_tokens(
        "Bonjour, le monde!", None
    )
    assert reply["usage"]["prompt_tokens"] == count_message_tokens(messages, None)
    assert cut["choices"][0]["finish_reason"] == "length"
    assert cut["choices"][0]["message"]["content"].startswith("word word")
    assert cut["usage"]["completion_tokens"] <= 5


async def test_hang_directive_holds_until_the_client_disconnects() -> None:
    with serve(tokenizer=None) as sim:
        timeout = aiohttp.ClientTimeout(total=0.3)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            with pytest.raises(asyncio.TimeoutError):
                await post(session, sim, "[[sim:hang]]")
        await wait_for(lambda: sim.stats()["in_flight"] == 0)
        stats = sim.stats()

    assert stats["requests"] == 1
    assert stats["disconnected"] == 1
    assert stats["max_in_flight"] == 1
    assert stats["ok"] == 0


def test_closing_with_a_hanging_request_is_quick_and_clean() -> None:
    outcome: list[int | str] = []
    sim = serve(tokenizer=None)

    def hang() -> None:
        body = json.dumps({"model": "sim", "messages": user("[[sim:hang]]")})
        request = urllib.request.Request(
            f"{sim.base_url}/chat/completions",
            data=body.encode(),
            headers={"content-type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                outcome.append(response.status)
        except urllib.error.HTTPError as exc:
            with exc:
                outcome.append(exc.code)
        except OSError:
            outcome.append("connection dropped")

    client = threading.Thread(target=hang)
    client.start()
    deadline = time.monotonic() + 5
    while sim.stats()["in_flight"] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)

    started = time.monotonic()
    sim.close()
    client.join(5)

    assert time.monotonic() - started < 2.0
    assert sim.closed
    assert outcome in ([503], ["connection dropped"])
    sim.close()  # closing twice is harmless


# --- stats, models, serving --------------------------------------------------


async def test_stats_count_and_reset() -> None:
    clock = FakeClock(now=50.0)
    with serve(requests_per_minute=60, tokenizer=None, clock=clock) as sim:
        async with aiohttp.ClientSession() as session:
            first = await post(session, sim, "One")
            clock.advance(5.0)
            second = await post(session, sim, "Two")
            await post(session, sim, "[[sim:status=503]]")

            async with session.get(f"{sim.url}/stats") as response:
                over_http = await response.json()
            stats = sim.stats()

            async with session.post(f"{sim.url}/stats/reset") as response:
                assert response.status == 200
            after_reset = sim.stats()

    assert stats["requests"] == 3
    assert stats["ok"] == 2
    assert stats["rate_limited"] == 0
    assert stats["errors_by_status"] == {503: 1}
    assert stats["in_flight"] == 0
    assert stats["max_in_flight"] == 1
    usages = [first[2]["usage"], second[2]["usage"]]
    assert stats["prompt_tokens"] == sum(u["prompt_tokens"] for u in usages)
    assert stats["completion_tokens"] == sum(u["completion_tokens"] for u in usages)
    assert stats["admitted_times"] == [0.0, 5.0]

    assert over_http["errors_by_status"] == {"503": 1}  # JSON keys are strings
    assert {**over_http, "errors_by_status": {503: 1}} == stats

    assert after_reset["requests"] == 0
    assert after_reset["ok"] == 0
    assert after_reset["errors_by_status"] == {}
    assert after_reset["admitted_times"] == []
    assert after_reset["prompt_tokens"] == 0


async def test_models_endpoint_lists_sim() -> None:
    with serve(tokenizer=None) as sim:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{sim.base_url}/models") as response:
                body = await response.json()

    assert [model["id"] for model in body["data"]] == ["sim"]
    assert sim.base_url == f"{sim.url}/v1"
    assert sim.url == f"http://127.0.0.1:{sim.port}"
    assert sim.port > 0


async def test_serve_async_runs_on_the_current_loop() -> None:
    async with serve_async(requests_per_minute=60, tokenizer=None) as sim:
        async with aiohttp.ClientSession() as session:
            status, headers, _ = await post(session, sim)
        stats = sim.stats()

    assert status == 200
    assert headers["x-ratelimit-remaining-requests"] == "59"
    assert stats["ok"] == 1


def test_make_app_returns_an_aiohttp_application() -> None:
    from aiohttp import web

    app = make_app(SimConfig(seed=3))
    paths = {resource.canonical for resource in app.router.resources()}

    assert isinstance(app, web.Application)
    assert {"/v1/chat/completions", "/chat/completions", "/stats"} <= paths


def test_cli_prints_base_url_and_stops_on_ctrl_c() -> None:
    command = [sys.executable, "-m", "deluge_nb.sim", "--port", "0"]
    command += ["--rpm", "600", "--tokenizer", "none"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().decode().strip()
        assert line.startswith("http://127.0.0.1:")
        assert line.endswith("/v1")
        with urllib.request.urlopen(f"{line}/models", timeout=5) as response:
            assert json.loads(response.read())["data"][0]["id"] == "sim"

        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


# --- buckets and durations, with a fake clock ---------------------------------


def test_bucket_starts_full_and_refills_continuously_up_to_capacity() -> None:
    clock = FakeClock()
    bucket = Bucket(60_000, burst_seconds=2, clock=clock)

    assert bucket.capacity == 2000
    assert bucket.rate == 1000
    assert bucket.level() == 2000
    assert bucket.wait_time(2000) == 0

    bucket.take(1500)
    assert bucket.level() == 500
    assert bucket.wait_time(800) == pytest.approx(0.3)
    assert bucket.time_to_full() == pytest.approx(1.5)

    clock.advance(0.25)
    assert bucket.level() == pytest.approx(750)
    assert bucket.wait_time(800) == pytest.approx(0.05)

    clock.advance(10)
    assert bucket.level() == 2000  # never above capacity
    bucket.give_back(500)
    assert bucket.level() == 2000


def test_bucket_lets_an_oversize_request_through_when_full_then_pays_back() -> None:
    clock = FakeClock()
    bucket = Bucket(600, burst_seconds=2, clock=clock)  # capacity 20, 10/s
    assert bucket.wait_time(50) == 0

    bucket.take(50)
    assert bucket.level() == -30
    assert bucket.wait_time(1) == pytest.approx(3.1)
    assert bucket.wait_time(50) == pytest.approx(5.0)  # needs a full bucket
    assert bucket.remaining() == 550
    clock.advance(5)
    assert bucket.wait_time(50) == 0


def test_bucket_remaining_reconfigure_and_float_edges() -> None:
    clock = FakeClock()
    bucket = Bucket(60, burst_seconds=2, clock=clock)
    bucket.take(1)
    bucket.take(1)
    assert bucket.remaining() == 58
    assert bucket.wait_time(1) == pytest.approx(1.0)

    for _ in range(10):  # ten steps of 0.1 s add up to one request exactly
        clock.advance(0.1)
    assert bucket.wait_time(1) == 0

    bucket.reconfigure(600, burst_seconds=2)  # half full stays half full
    assert bucket.capacity == 20
    assert bucket.level() == pytest.approx(10)
    assert bucket.remaining() == 590

    clock.advance(-5)  # a clock going backwards never drains the bucket
    assert bucket.level() == pytest.approx(10)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.012, "12ms"),
        (1, "1s"),
        (360, "6m0s"),
        (90.5, "1m30.5s"),
        (0, "0s"),
        (-3, "0s"),
        (0.0015, "1.5ms"),
        (0.0005, "500µs"),
        (1.5e-7, "150ns"),
        (1.234, "1.234s"),
        (59.999, "59.999s"),
        (3600, "1h0m0s"),
        (7322.25, "2h2m2.25s"),
    ],
)
def test_format_go_duration(seconds: float, text: str) -> None:
    assert format_go_duration(seconds) == text


# --- helpers -----------------------------------------------------------------


async def wait_for(condition: Any, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)
