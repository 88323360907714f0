"""Tests of deluge_nb.sim: real HTTP against a server in a thread.

Both wire formats (OpenAI chat completions, Anthropic Messages), their rate
limits and headers, directives and injected faults. Rate-limit and storm
tests inject a frozen clock into the server (and a fixed wall clock for the
Anthropic reset stamps), so the arithmetic is exact and nothing sleeps to
wait for refill; only the latency and hang tests really sleep, and briefly.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
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
from deluge_nb.sim.__main__ import _config_from_args, _parser
from deluge_nb.sim._bucket import Bucket, format_go_duration, format_rfc3339

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
    command += ["--anthropic-itpm", "1000", "--anthropic-otpm", "500"]
    command += ["--fault", "429_storm=1", "--storm-seconds", "3"]
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

        body = {"model": "m", "max_tokens": 5, "messages": user("Hi")}
        request = urllib.request.Request(
            f"{line}/messages",
            data=json.dumps(body).encode(),
            headers={"content-type": "application/json"},
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=5)
        with refused.value as error:
            assert error.code == 429
            assert error.headers["retry-after"] == "3"  # the storm's length
            assert error.headers["anthropic-ratelimit-input-tokens-limit"] == "1000"
            assert error.headers["anthropic-ratelimit-output-tokens-limit"] == "500"
            assert json.loads(error.read())["error"]["type"] == "rate_limit_error"

        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def test_cli_fault_flags_build_the_config() -> None:
    args = _parser().parse_args(
        ["--fault", "503=0.1", "--fault", "reset=0.05", "--fault-retry-after", "2"]
    )
    config = _config_from_args(args)

    assert dict(config.faults) == {"503": 0.1, "reset": 0.05}
    assert config.fault_retry_after_s == 2.0
    assert config.storm_s == 5.0
    assert config.input_tokens_per_minute is None
    too_many = _parser().parse_args(["--fault", "500=0.7", "--fault", "503=0.7"])
    with pytest.raises(ValueError, match="sum to at most 1"):
        _config_from_args(too_many)


@pytest.mark.parametrize("flag", ["404=0.1", "500", "500=often"])
def test_cli_rejects_malformed_fault_flags(
    flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        _parser().parse_args(["--fault", flag])

    assert exited.value.code == 2
    assert "--fault" in capsys.readouterr().err


# --- Anthropic format ----------------------------------------------------------

WALL = 1_796_314_800.25  # 2026-12-03T16:20:00.25Z


def stamp(unix_seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix_seconds))


async def post_messages(
    session: aiohttp.ClientSession,
    sim: SimServer,
    content: str = "Say something.",
    *,
    max_tokens: int = 64,
    **body: Any,
) -> Reply:
    payload = {
        "model": "sim-claude",
        "max_tokens": max_tokens,
        "messages": user(content),
        **body,
    }
    url = f"{sim.base_url}/messages"
    headers = {"x-api-key": "sk-ant-sim-canary", "anthropic-version": "2023-06-01"}
    async with session.post(url, json=payload, headers=headers) as response:
        return response.status, CIMultiDict(response.headers), await response.json()


async def test_anthropic_reply_shape_and_determinism(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    system_blocks = [{"type": "text", "text": "Be brief."}]
    with serve(seed=7, tokenizer=None) as sim:
        async with aiohttp.ClientSession() as session:
            status, headers, first = await post_messages(
                session, sim, "Hello there", system="Be brief."
            )
            _, _, as_blocks = await post_messages(
                session, sim, "Hello there", system=system_blocks
            )
            _, _, no_system = await post_messages(session, sim, "Hello there")
            _, _, capped = await post_messages(session, sim, "Go on", max_tokens=3)
            _, _, echoed = await post_messages(
                session, sim, "[[sim:echo]] Bonjour", temperature=0.5
            )
        stats = sim.stats()

    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    assert first["type"] == "message"
    assert first["role"] == "assistant"
    assert first["id"].startswith("msg_")
    assert first["model"] == "sim-claude"
    assert first["stop_reason"] == "end_turn"
    assert first["stop_sequence"] is None
    [block] = first["content"]
    assert block["type"] == "text"
    text = block["text"]
    assert first["usage"] == {
        "input_tokens": count_message_tokens(
            [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hello there"},
            ],
            None,
        ),
        "output_tokens": count_text_tokens(text, None),
        "cache_read_input_tokens": 0,
        "cache_creation_input_tokens": 0,
    }

    # The same system prompt as text blocks is the same request.
    assert as_blocks["content"] == first["content"]
    assert as_blocks["usage"] == first["usage"]
    assert no_system["content"][0]["text"] != text
    assert no_system["usage"]["input_tokens"] < first["usage"]["input_tokens"]

    assert capped["stop_reason"] == "max_tokens"
    assert capped["usage"]["output_tokens"] <= 3
    assert echoed["content"][0]["text"] == "Bonjour"

    assert stats["by_format"]["anthropic"] == {
        "requests": 5,
        "ok": 5,
        "rate_limited": 0,
    }
    assert stats["by_format"]["openai"]["requests"] == 0
    # x-api-key is accepted and never logged.
    assert not [r for r in caplog.records if "canary" in r.getMessage()]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "parse the JSON body"),
        (b"[1, 2]", "JSON object"),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": "x"}]}',
            "max_tokens",
        ),
        (b'{"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}', "model"),
        (b'{"model": "m", "max_tokens": 0, "messages": []}', "max_tokens"),
        (b'{"model": "m", "max_tokens": 5, "messages": []}', "messages"),
        (
            b'{"model": "m", "max_tokens": 5, "messages": '
            b'[{"role": "system", "content": "x"}]}',
            "top-level `system`",
        ),
        (
            b'{"model": "m", "max_tokens": 5, "messages": '
            b'[{"role": "tool", "content": "x"}]}',
            "messages.0.role",
        ),
        (
            b'{"model": "m", "max_tokens": 5, "messages": '
            b'[{"role": "user", "content": 3}]}',
            "messages.0.content",
        ),
        (
            b'{"model": "m", "max_tokens": 5, "system": [{"text": "x"}], '
            b'"messages": [{"role": "user", "content": "x"}]}',
            "system",
        ),
        (
            b'{"model": "m", "max_tokens": 5, "temperature": 1.5, '
            b'"messages": [{"role": "user", "content": "x"}]}',
            "temperature",
        ),
        (
            b'{"model": "m", "max_tokens": 5, "messages": '
            b'[{"role": "user", "content": "[[sim:explode]]"}]}',
            "simulator directive",
        ),
    ],
)
async def test_malformed_anthropic_requests_get_anthropic_style_400(
    body: bytes, fragment: str
) -> None:
    with serve(tokenizer=None) as sim:
        async with aiohttp.ClientSession() as session:
            url = f"{sim.base_url}/messages"
            async with session.post(url, data=body) as response:
                status, payload = response.status, await response.json()

    assert status == 400
    assert payload["type"] == "error"
    assert payload["error"]["type"] == "invalid_request_error"
    assert fragment in payload["error"]["message"]


async def test_anthropic_context_window_and_forced_statuses() -> None:
    content = "word " * 40
    tokens = prompt_tokens(content)
    with serve(context_window=50, tokenizer=None) as sim:
        async with aiohttp.ClientSession() as session:
            too_long = await post_messages(session, sim, content, max_tokens=40)
            overloaded = await post_messages(session, sim, "[[sim:status=529]]")
            limited = await post_messages(
                session, sim, "[[sim:status=429]][[sim:retry_after=2]]"
            )
            server = await post_messages(session, sim, "[[sim:status=503]]")
            missing = await post_messages(session, sim, "[[sim:status=404]]")

    assert too_long[0] == 400
    assert too_long[2]["error"]["message"] == (
        f"input length and `max_tokens` exceed context limit: {tokens} + 40 > 50, "
        "decrease input length or `max_tokens` and try again"
    )
    assert overloaded[0] == 529
    assert overloaded[2]["error"]["type"] == "overloaded_error"
    assert limited[0] == 429
    assert limited[2]["error"]["type"] == "rate_limit_error"
    assert limited[1]["retry-after"] == "2"
    assert server[2]["error"]["type"] == "api_error"
    assert missing[2]["error"]["type"] == "not_found_error"


async def test_anthropic_latency_model() -> None:
    with serve(latency_s=0.1, latency_per_output_token_s=0.004, tokenizer=None) as sim:
        async with aiohttp.ClientSession() as session:
            started = time.monotonic()
            _, _, reply = await post_messages(session, sim, "Hi")
            elapsed = time.monotonic() - started

    assert elapsed >= 0.1 + 0.004 * reply["usage"]["output_tokens"]


# --- Anthropic limits ----------------------------------------------------------


async def test_anthropic_output_tokens_reserve_max_tokens_and_refund() -> None:
    clock = FakeClock()
    slow = "[[sim:echo]][[sim:sleep=0.3]] one two three"
    with serve(
        requests_per_minute=60,
        input_tokens_per_minute=60_000,
        output_tokens_per_minute=6_000,  # a burst of 200, refilling 100/s
        tokenizer=None,
        clock=clock,
        wall_clock=lambda: WALL,
    ) as sim:
        async with aiohttp.ClientSession() as session:
            slow_task = asyncio.create_task(
                post_messages(session, sim, slow, max_tokens=150)
            )
            await wait_for(lambda: sim.stats()["in_flight"] == 1)
            # 150 of the 200 are reserved while the slow one runs.
            refused = await post_messages(session, sim, "Hi", max_tokens=100)
            slow_reply = await slow_task
            # Its unused 146 came back, so the same request now fits.
            fast = await post_messages(session, sim, "[[sim:echo]] Hi", max_tokens=100)

    status, headers, body = refused
    assert status == 429
    assert body["type"] == "error"
    assert body["error"]["type"] == "rate_limit_error"
    assert "6000 output tokens per minute" in body["error"]["message"]
    assert "try again in 500ms" in body["error"]["message"]  # 50 missing at 100/s
    assert headers["retry-after"] == "1"
    assert "retry-after-ms" not in headers
    assert headers["anthropic-ratelimit-output-tokens-remaining"] == str(6000 - 150)

    slow_out = slow_reply[2]["usage"]["output_tokens"]
    assert slow_reply[2]["content"][0]["text"] == "one two three"
    assert slow_out == count_text_tokens("one two three", None)
    fast_out = fast[2]["usage"]["output_tokens"]
    assert fast[0] == 200

    used_out = slow_out + fast_out
    used_in = slow_reply[2]["usage"]["input_tokens"] + fast[2]["usage"]["input_tokens"]
    h = fast[1]
    assert h["anthropic-ratelimit-requests-limit"] == "60"
    assert h["anthropic-ratelimit-requests-remaining"] == "58"  # the 429 took none
    # 2 s until the requests bucket is full, rounded up to the second.
    assert h["anthropic-ratelimit-requests-reset"] == stamp(math.ceil(WALL + 2))
    assert h["anthropic-ratelimit-input-tokens-limit"] == "60000"
    assert h["anthropic-ratelimit-input-tokens-remaining"] == str(60_000 - used_in)
    assert h["anthropic-ratelimit-output-tokens-limit"] == "6000"
    assert h["anthropic-ratelimit-output-tokens-remaining"] == str(6000 - used_out)
    # used_out tokens refill at 100/s; the stamp is rounded up to the second.
    out_reset = stamp(math.ceil(WALL + used_out / 100))
    assert h["anthropic-ratelimit-output-tokens-reset"] == out_reset
    # Output is the tighter of the two, so the tokens-* headers repeat it.
    assert h["anthropic-ratelimit-tokens-limit"] == "6000"
    assert h["anthropic-ratelimit-tokens-remaining"] == str(6000 - used_out)
    assert h["anthropic-ratelimit-tokens-reset"] == out_reset
    assert not [name for name in h if name.lower().startswith("x-ratelimit")]


async def test_anthropic_input_tokens_and_requests_buckets() -> None:
    clock = FakeClock()
    content = "word " * 120
    tokens = prompt_tokens(content)  # about 160; the burst holds 200
    with serve(
        requests_per_minute=60,
        input_tokens_per_minute=6_000,
        tokenizer=None,
        clock=clock,
        wall_clock=lambda: WALL,
    ) as sim:
        async with aiohttp.ClientSession() as session:
            first = await post_messages(session, sim, content)
            second = await post_messages(session, sim, content)
            clock.advance(tokens / 100 - 0.4)  # the 200 - tokens left, plus refill
            third = await post_messages(session, sim, content)
            huge = await post_messages(session, sim, "word " * 5000)
            clock.advance(0.5)  # half a request, and 50 input tokens
            small = [await post_messages(session, sim, "x") for _ in range(2)]

    assert first[0] == 200
    status, headers, body = second
    assert status == 429
    assert "input tokens per minute" in body["error"]["message"]
    missing = tokens - (200 - tokens)
    assert headers["retry-after"] == str(math.ceil(missing / 100))
    assert headers["anthropic-ratelimit-input-tokens-remaining"] == str(6000 - tokens)
    assert "anthropic-ratelimit-output-tokens-limit" not in headers
    # With only an input limit, the tokens-* headers describe it.
    assert headers["anthropic-ratelimit-tokens-limit"] == "6000"

    assert third[0] == 200
    assert huge[0] == 429
    assert "Request too large for input tokens" in huge[2]["error"]["message"]
    assert huge[1]["x-should-retry"] == "false"
    assert "retry-after" not in huge[1]
    # The requests bucket holds 2 and refills 1/s: 1.5 covers one more only.
    assert [s for s, _, _ in small] == [200, 429]
    assert "60 requests per minute" in small[1][2]["error"]["message"]
    assert small[1][1]["retry-after"] == "1"


async def test_openai_and_anthropic_limits_are_separate() -> None:
    clock = FakeClock()
    with serve(
        requests_per_minute=60,
        tokens_per_minute=100,
        output_tokens_per_minute=6000,
        tokenizer=None,
        clock=clock,
    ) as sim:
        async with aiohttp.ClientSession() as session:
            anthropic = await post_messages(session, sim, "Hi", max_tokens=500)
            openai = await post(session, sim, "Hi", max_tokens=500)
            openai_ok = await post(session, sim, "Hi", max_tokens=20)
            anthropic_again = await post_messages(session, sim, "Hi", max_tokens=5)
        stats = sim.stats()

    # tokens_per_minute limits only the OpenAI endpoint.
    assert anthropic[0] == 200
    assert openai[0] == 429
    assert "Request too large for tokens per min" in openai[2]["error"]["message"]
    # Each format has its own requests bucket.
    assert openai_ok[1]["x-ratelimit-remaining-requests"] == "59"
    assert anthropic_again[1]["anthropic-ratelimit-requests-remaining"] == "58"
    assert "anthropic-ratelimit-requests-limit" not in openai_ok[1]
    assert stats["by_format"] == {
        "openai": {"requests": 2, "ok": 1, "rate_limited": 1},
        "anthropic": {"requests": 2, "ok": 2, "rate_limited": 0},
    }

    sim.set_limits(input_tokens_per_minute=600, output_tokens_per_minute=None)
    assert sim.config.input_tokens_per_minute == 600
    assert sim.config.output_tokens_per_minute is None
    assert sim.config.tokens_per_minute == 100  # left out, so kept
    with pytest.raises(ValueError, match="output_tokens_per_minute"):
        sim.set_limits(output_tokens_per_minute=0)


# --- faults --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("faults", "match"),
    [
        ({"404": 0.1}, "unknown fault kind '404'"),
        ({"500": 1.5}, r"in \[0, 1\]"),
        ({"500": -0.1}, r"in \[0, 1\]"),
        ({"500": True}, "must be a number"),
        ({"500": "0.1"}, "must be a number"),
        ({"500": 0.6, "reset": 0.3, "429_storm": 0.2}, "sum to at most 1"),
    ],
)
def test_fault_rates_are_validated(faults: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SimConfig(faults=faults)


def test_fault_config_is_a_read_only_copy() -> None:
    rates = {"500": 0.5, "hang": 0.5}  # summing to exactly 1 is fine
    config = SimConfig(faults=rates)
    rates["500"] = 0.9

    assert dict(config.faults) == {"500": 0.5, "hang": 0.5}
    with pytest.raises(TypeError):
        config.faults["500"] = 1.0  # type: ignore[index]
    with pytest.raises(ValueError, match="storm_s"):
        SimConfig(storm_s=0)
    with pytest.raises(ValueError, match="fault_retry_after_s"):
        SimConfig(fault_retry_after_s=-1)


@pytest.mark.parametrize(
    ("kind", "openai_type", "anthropic_type"),
    [
        ("500", "server_error", "api_error"),
        ("502", "server_error", "api_error"),
        ("503", "server_error", "api_error"),
        ("529", "server_error", "overloaded_error"),
    ],
)
async def test_status_faults_answer_in_each_format_and_take_no_budget(
    kind: str, openai_type: str, anthropic_type: str
) -> None:
    clock = FakeClock()
    with serve(
        requests_per_minute=60, faults={kind: 1.0}, tokenizer=None, clock=clock
    ) as sim:
        async with aiohttp.ClientSession() as session:
            openai = [await post(session, sim) for _ in range(3)]
            anthropic = [await post_messages(session, sim) for _ in range(3)]
            # A directive wins over the injected fault.
            exempt = await post(session, sim, "[[sim:echo]] passes")
        stats = sim.stats()

    status = int(kind)
    for code, headers, body in openai:
        assert code == status
        assert body["error"]["type"] == openai_type
        assert headers["x-ratelimit-remaining-requests"] == "60"
    for code, headers, body in anthropic:
        assert code == status
        assert body["type"] == "error"
        assert body["error"]["type"] == anthropic_type
        assert headers["anthropic-ratelimit-requests-remaining"] == "60"
    assert exempt[0] == 200
    assert exempt[2]["choices"][0]["message"]["content"] == "passes"
    assert exempt[1]["x-ratelimit-remaining-requests"] == "59"

    assert stats["faults"] == {kind: 6}
    assert stats["errors_by_status"] == {status: 6}
    assert stats["ok"] == 1
    assert stats["requests"] == 7


async def test_429_fault_carries_the_configured_retry_after() -> None:
    with serve(faults={"429": 1.0}, fault_retry_after_s=2.5, tokenizer=None) as sim:
        async with aiohttp.ClientSession() as session:
            openai = await post(session, sim)
            anthropic = await post_messages(session, sim)
        stats = sim.stats()

    for status, headers, _ in (openai, anthropic):
        assert status == 429
        assert headers["retry-after"] == "3"
        assert headers["retry-after-ms"] == "2500"
    assert openai[2]["error"]["code"] == "rate_limit_exceeded"
    assert anthropic[2]["error"]["type"] == "rate_limit_error"
    assert "try again in 2.5s" in anthropic[2]["error"]["message"]
    assert stats["faults"] == {"429": 2}
    assert stats["rate_limited"] == 2


@pytest.mark.parametrize("wire", ["openai", "anthropic"])
async def test_reset_fault_drops_the_connection_without_a_status(wire: str) -> None:
    send = post if wire == "openai" else post_messages
    with serve(faults={"reset": 1.0}, tokenizer=None) as sim:
        async with aiohttp.ClientSession() as session:
            for _ in range(2):
                with pytest.raises(aiohttp.ClientConnectionError):
                    await send(session, sim)
            survivor = await send(session, sim, "[[sim:echo]] still here")
        await wait_for(lambda: sim.stats()["in_flight"] == 0)
        stats = sim.stats()

    assert survivor[0] == 200
    assert stats["faults"] == {"reset": 2}
    assert stats["errors_by_status"] == {}
    assert stats["disconnected"] == 0
    assert stats["requests"] == 3
    assert stats["ok"] == 1


async def test_hang_fault_is_admitted_and_never_answers() -> None:
    clock = FakeClock()
    with serve(
        requests_per_minute=60, faults={"hang": 1.0}, tokenizer=None, clock=clock
    ) as sim:
        timeout = aiohttp.ClientTimeout(total=0.3)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            with pytest.raises(asyncio.TimeoutError):
                await post_messages(session, sim)
        async with aiohttp.ClientSession() as session:
            after = await post_messages(session, sim, "[[sim:echo]] ok")
        await wait_for(lambda: sim.stats()["in_flight"] == 0)
        stats = sim.stats()

    assert after[0] == 200
    # The hung request took its share of the budget: 60 - 1 - 1.
    assert after[1]["anthropic-ratelimit-requests-remaining"] == "58"
    assert stats["faults"] == {"hang": 1}
    assert stats["disconnected"] == 1


@pytest.mark.parametrize("wire", ["openai", "anthropic"])
async def test_truncated_fault_is_a_200_with_half_the_json(wire: str) -> None:
    path = "/chat/completions" if wire == "openai" else "/messages"
    payload = {"model": "m", "max_tokens": 30, "messages": user("Tell me more")}

    async def raw(sim: SimServer) -> tuple[int, str, bytes]:
        async with aiohttp.ClientSession() as session:
            async with session.post(sim.base_url + path, json=payload) as response:
                return response.status, response.content_type, await response.read()

    with serve(seed=3, tokenizer=None) as clean:
        _, _, whole = await raw(clean)
    with serve(seed=3, faults={"truncated": 1.0}, tokenizer=None) as sim:
        status, content_type, cut = await raw(sim)
        stats = sim.stats()

    assert status == 200
    assert content_type == "application/json"
    assert len(cut) == len(whole) // 2  # ids and stamps have fixed widths
    assert cut.startswith(b"{")
    with pytest.raises(ValueError):
        json.loads(cut)
    assert json.loads(whole)["model"] == "m"
    assert stats["faults"] == {"truncated": 1}
    assert stats["ok"] == 0
    assert stats["errors_by_status"] == {}


async def test_faults_follow_the_seed_and_arrival_order() -> None:
    faults = {"500": 0.2, "429": 0.15, "truncated": 0.1, "reset": 0.05}

    async def outcomes(seed: int) -> tuple[list[str], dict[str, Any]]:
        seen = []
        with serve(seed=seed, faults=faults, tokenizer=None) as sim:
            async with aiohttp.ClientSession() as session:
                for i in range(60):
                    send = post if i % 2 else post_messages
                    try:
                        status, _, _ = await send(session, sim, f"Prompt {i}")
                    except aiohttp.ClientConnectionError:
                        seen.append("reset")
                    except json.JSONDecodeError:
                        seen.append("truncated")
                    else:
                        seen.append(str(status))
            stats = sim.stats()
        return seen, stats

    first, stats = await outcomes(seed=42)
    again, _ = await outcomes(seed=42)
    other, _ = await outcomes(seed=43)

    assert first == again
    assert first != other
    counts = {kind: first.count(kind) for kind in ("500", "429", "truncated", "reset")}
    assert stats["faults"] == counts
    assert stats["ok"] == first.count("200")
    # 50 % of requests are meant to fail; 60 draws land well inside 25-75 %.
    assert 15 <= 60 - first.count("200") <= 45
    assert all(counts.values())


async def test_replies_do_not_depend_on_faults_elsewhere() -> None:
    prompts = [f"Question number {i}" for i in range(12)]
    with (
        serve(seed=5, tokenizer=None) as clean,
        serve(seed=5, faults={"503": 0.5, "500": 0.2}, tokenizer=None) as flaky,
    ):
        async with aiohttp.ClientSession() as session:
            expected = [
                (await post_messages(session, clean, p))[2]["content"] for p in prompts
            ]
            got = []
            for prompt in prompts:
                for _ in range(40):
                    status, _, body = await post_messages(session, flaky, prompt)
                    if status == 200:
                        got.append(body["content"])
                        break
        faults = flaky.stats()["faults"]

    assert got == expected
    assert faults["503"] + faults["500"] > 0


async def test_429_storm_refuses_everything_for_storm_seconds() -> None:
    clock = FakeClock()
    with serve(
        requests_per_minute=60,
        faults={"429_storm": 1.0},
        storm_s=5,
        tokenizer=None,
        clock=clock,
    ) as sim:
        async with aiohttp.ClientSession() as session:
            start = await post(session, sim)
            clock.advance(2)
            during = await post_messages(session, sim)
            exempt = await post(session, sim, "[[sim:echo]] through the storm")
            clock.advance(2.5)
            late = await post(session, sim)
            clock.advance(0.5)  # the storm is over; at rate 1 a new one starts
            next_storm = await post(session, sim)
        stats = sim.stats()

    waits = [
        (status, headers["retry-after"], headers["retry-after-ms"])
        for status, headers, _ in (start, during, late, next_storm)
    ]
    assert waits == [
        (429, "5", "5000"),
        (429, "3", "3000"),
        (429, "1", "500"),
        (429, "5", "5000"),
    ]
    assert "429 storm" in during[2]["error"]["message"]
    assert during[2]["error"]["type"] == "rate_limit_error"
    assert exempt[0] == 200
    assert exempt[1]["x-ratelimit-remaining-requests"] == "59"  # storms take none
    assert stats["faults"] == {"429_storm": 4}
    assert stats["storms"] == 2
    assert stats["rate_limited"] == 4


async def test_a_storm_refuses_requests_whatever_they_draw() -> None:
    clock = FakeClock()
    with serve(
        seed=1, faults={"429_storm": 0.2}, storm_s=4, tokenizer=None, clock=clock
    ) as sim:
        async with aiohttp.ClientSession() as session:
            timeline = []
            for _ in range(40):
                status, headers, _ = await post(session, sim)
                timeline.append((status, headers.get("retry-after-ms")))
                clock.advance(1)
        stats = sim.stats()

    starts = [i for i, (_, ms) in enumerate(timeline) if ms == "4000"]
    assert starts, "seed 1 starts at least one storm in 40 draws"
    for i in starts:
        # The start and the 3 requests after it (1 s apart) are refused.
        expected = [(429, "4000"), (429, "3000"), (429, "2000"), (429, "1000")]
        assert timeline[i : i + 4] == expected[: len(timeline[i : i + 4])]
    assert stats["storms"] == len(starts)
    assert stats["ok"] == sum(1 for status, _ in timeline if status == 200)
    assert stats["ok"] >= 10


async def test_stats_track_concurrency_and_fault_counters_reset() -> None:
    with serve(faults={"503": 0.0, "reset": 0.0}, tokenizer=None) as sim:
        async with aiohttp.ClientSession() as session:
            slow = [
                post_messages(session, sim, "[[sim:sleep=0.2]] slow"),
                post(session, sim, "[[sim:sleep=0.2]] slow"),
                post_messages(session, sim, "[[sim:sleep=0.2]] slow"),
            ]
            await asyncio.gather(*slow)
            async with session.get(f"{sim.url}/stats") as response:
                over_http = await response.json()
        stats = sim.stats()
        sim.reset_stats()
        after = sim.stats()

    assert stats["max_in_flight"] == 3
    assert stats["in_flight"] == 0
    assert stats["faults"] == {"503": 0, "reset": 0}  # configured kinds, none hit
    assert over_http["by_format"] == {
        "openai": {"requests": 1, "ok": 1, "rate_limited": 0},
        "anthropic": {"requests": 2, "ok": 2, "rate_limited": 0},
    }
    assert after["max_in_flight"] == 0
    assert after["by_format"]["anthropic"]["requests"] == 0
    assert after["storms"] == 0


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


@pytest.mark.parametrize(
    ("unix_seconds", "text"),
    [
        (0, "1970-01-01T00:00:00Z"),
        (1_796_314_800, "2026-12-03T16:20:00Z"),
        (1_796_314_800.000_000_000_1, "2026-12-03T16:20:00Z"),
        (1_796_314_800.001, "2026-12-03T16:20:01Z"),  # rounded up, never early
        (1_796_314_859.5, "2026-12-03T16:21:00Z"),
        (1_798_761_599.9, "2027-01-01T00:00:00Z"),
    ],
)
def test_format_rfc3339(unix_seconds: float, text: str) -> None:
    assert format_rfc3339(unix_seconds) == text


# --- helpers -----------------------------------------------------------------


async def wait_for(condition: Any, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)
