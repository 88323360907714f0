"""The wire protocols: request building, response parsing, error messages.

Table tests for the OpenAI chat-completions and Anthropic Messages shapes,
junk included, and one round trip of the Anthropic provider through the
client to the simulator's Anthropic endpoint over real HTTP.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import aiohttp
import pytest

import deluge_nb
from deluge_nb._models import ModelInfo, get_model
from deluge_nb._tokens import count_message_tokens
from deluge_nb._types import Usage
from deluge_nb.providers import (
    AnthropicMessages,
    OpenAIChat,
    ParsedResponse,
    get_provider,
)
from deluge_nb.providers._openai import MalformedResponseError
from deluge_nb.sim import serve

KEY = "sk-test-canary-5f0c2e"


def model_info(provider: str, base_url: str = "https://api.example.com/v1") -> Any:
    return ModelInfo(
        name="m",
        provider=provider,
        api_model="wire-model",
        base_url=base_url,
        api_key_env=None,
        input_price=1.0,
        output_price=2.0,
    )


CHAT: list[dict[str, Any]] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello."},
    {"role": "system", "content": [{"type": "text", "text": "Answer in French."}]},
    {"role": "user", "content": "And now?"},
]


# --- registry ----------------------------------------------------------------


def test_providers_are_registered_by_name() -> None:
    assert isinstance(get_provider("anthropic"), AnthropicMessages)
    assert isinstance(get_provider("openai"), OpenAIChat)
    assert isinstance(get_provider("openai-compatible"), OpenAIChat)


@pytest.mark.parametrize(
    ("name", "prices", "limits"),
    [
        ("claude-sonnet-4-5", (3.00, 0.30, 3.75, 15.00), (50, 30_000, 8_000)),
        ("claude-haiku-4-5", (1.00, 0.10, 1.25, 5.00), (50, 50_000, 10_000)),
    ],
)
def test_builtin_anthropic_models(
    name: str,
    prices: tuple[float, float, float, float],
    limits: tuple[int, int, int],
) -> None:
    info = get_model(name)

    assert info.provider == "anthropic"
    assert info.base_url == "https://api.anthropic.com/v1"
    assert info.api_key_env == "ANTHROPIC_API_KEY"
    assert info.tokenizer is None
    assert info.context_window == 200_000
    assert (
        info.input_price,
        info.cached_input_price,
        info.cache_write_price,
        info.output_price,
    ) == prices
    assert (
        info.max_requests_per_minute,
        info.max_input_tokens_per_minute,
        info.max_output_tokens_per_minute,
    ) == limits
    # tpm is the sum, so the combined reservation never binds before them.
    assert info.max_tokens_per_minute == limits[1] + limits[2]


def test_anthropic_usage_is_billed_at_each_published_price() -> None:
    parsed = AnthropicMessages().parse(
        {
            "content": [{"type": "text", "text": "ok"}],
            "usage": {
                "input_tokens": 1_000,
                "cache_read_input_tokens": 2_000,
                "cache_creation_input_tokens": 500,
                "output_tokens": 300,
            },
        }
    )
    assert parsed.usage is not None

    cost = get_model("claude-sonnet-4-5").cost_usd(parsed.usage)

    expected = (1_000 * 3.00 + 2_000 * 0.30 + 500 * 3.75 + 300 * 15.00) / 1e6
    assert cost == pytest.approx(expected, rel=1e-12)


# --- OpenAI chat completions ---------------------------------------------------


def test_openai_build() -> None:
    info = model_info("openai")
    params = {"max_tokens": 64, "temperature": None}

    spec = OpenAIChat().build(info, CHAT, params, KEY)
    keyless = OpenAIChat().build(info, CHAT, {"temperature": 0.0}, None)

    assert spec.url == "https://api.example.com/v1/chat/completions"
    assert spec.body == {"model": "wire-model", "messages": CHAT, "max_tokens": 64}
    assert spec.headers["Authorization"] == f"Bearer {KEY}"
    assert spec.headers["Content-Type"] == "application/json"
    assert KEY not in repr(spec)
    assert "Authorization" not in keyless.headers
    assert keyless.body["temperature"] == 0.0  # falsy but given: sent


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            {
                "choices": [
                    {"message": {"content": "Bonjour"}, "finish_reason": "stop"}
                ],
                "usage": {
                    "prompt_tokens": 2006,
                    "completion_tokens": 300,
                    "prompt_tokens_details": {"cached_tokens": 1920},
                    "completion_tokens_details": {"reasoning_tokens": 192},
                },
            },
            ParsedResponse(
                "Bonjour",
                "stop",
                Usage(
                    input_tokens=2006,
                    cached_input_tokens=1920,
                    output_tokens=300,
                    reasoning_tokens=192,
                ),
            ),
        ),
        (
            {
                "choices": [{"message": {"content": None}, "finish_reason": "length"}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 0},
            },
            ParsedResponse("", "length", Usage(input_tokens=5)),
        ),
        (
            {
                "choices": [{"message": {"content": "x"}}],
                "usage": {
                    "prompt_tokens": 7,
                    "completion_tokens": 1,
                    "prompt_tokens_details": None,
                    "completion_tokens_details": None,
                },
            },
            ParsedResponse("x", None, Usage(input_tokens=7, output_tokens=1)),
        ),
        (
            {"choices": [{"message": {"content": "no usage"}}], "usage": "junk"},
            ParsedResponse("no usage", None, None),
        ),
        # Some OpenAI-compatible servers send content as a list of parts.
        (
            {
                "choices": [
                    {
                        "message": {
                            "content": [
                                {"type": "text", "text": "Bon"},
                                {"type": "image_url", "image_url": {"url": "x"}},
                                {"type": "text", "text": "jour"},
                            ]
                        },
                        "finish_reason": "stop",
                    }
                ]
            },
            ParsedResponse("Bonjour", "stop", None),
        ),
        # Junk counts and details count as nothing, never as an exception.
        (
            {
                "choices": [{"message": {"content": "x"}, "finish_reason": 3}],
                "usage": {
                    "prompt_tokens": [5],
                    "completion_tokens": "2",
                    "prompt_tokens_details": ["x"],
                    "completion_tokens_details": {"reasoning_tokens": -4},
                },
            },
            ParsedResponse("x", None, Usage()),
        ),
    ],
)
def test_openai_parse(body: Any, expected: ParsedResponse) -> None:
    assert OpenAIChat().parse(body) == expected


@pytest.mark.parametrize(
    "body",
    [None, [], "text", {}, {"choices": []}, {"choices": [{}]}, {"choices": "x"}],
)
def test_openai_parse_rejects_junk(body: Any) -> None:
    with pytest.raises(MalformedResponseError, match="not a chat completion"):
        OpenAIChat().parse(body)


@pytest.mark.parametrize("content", [{"text": "x"}, 42, True])
def test_openai_parse_rejects_content_that_is_not_text(content: Any) -> None:
    body = {"choices": [{"message": {"content": content}}]}
    with pytest.raises(MalformedResponseError, match="neither text nor parts"):
        OpenAIChat().parse(body)


@pytest.mark.parametrize(
    ("status", "body_text", "expected"),
    [
        (
            429,
            json.dumps(
                {
                    "error": {
                        "message": "Rate limit reached for requests",
                        "type": "requests",
                        "code": "rate_limit_exceeded",
                    }
                }
            ),
            "HTTP 429: Rate limit reached for requests",
        ),
        (500, '{"error": "upstream died"}', "HTTP 500: upstream died"),
        (
            529,
            '{"type": "error", "error": {"type": "overloaded_error", '
            '"message": "Overloaded"}}',
            "HTTP 529: Overloaded",
        ),
        (502, "<html>Bad Gateway</html>", "HTTP 502: <html>Bad Gateway</html>"),
        (503, "   ", "HTTP 503: (empty body)"),
        (400, "[1, 2]", "HTTP 400: [1, 2]"),
    ],
)
def test_openai_error_message(status: int, body_text: str, expected: str) -> None:
    assert OpenAIChat().error_message(status, body_text) == expected


# --- Anthropic messages --------------------------------------------------------


def test_anthropic_build_moves_system_messages_to_the_top_level() -> None:
    info = model_info("anthropic", base_url="https://api.anthropic.com/v1")
    original = json.loads(json.dumps(CHAT))
    params = {"max_tokens": 256, "temperature": None}

    spec = AnthropicMessages().build(info, CHAT, params, KEY)

    assert spec.url == "https://api.anthropic.com/v1/messages"
    assert spec.body == {
        "model": "wire-model",
        "system": "Be brief.\n\nAnswer in French.",
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "And now?"},
        ],
        "max_tokens": 256,
    }
    assert dict(spec.headers) == {
        "x-api-key": KEY,
        "anthropic-version": "2023-06-01",
        "content-type": "application/json",
    }
    assert KEY not in repr(spec)
    assert CHAT == original  # the caller's messages are left alone


@pytest.mark.parametrize(
    ("messages", "params", "key", "expected_extra", "has_key"),
    [
        (
            [{"role": "user", "content": "Hi"}],
            {"max_tokens": 8, "temperature": 0.0},
            None,
            {"temperature": 0.0},
            False,
        ),
        (
            [{"role": "user", "content": "Hi"}],
            {"max_tokens": 8, "temperature": 0.7},
            "",
            {"temperature": 0.7},
            False,
        ),
        (
            [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
            {"max_tokens": 8},
            "k",
            {},
            True,
        ),
    ],
)
def test_anthropic_build_optional_parts(
    messages: list[dict[str, Any]],
    params: dict[str, Any],
    key: str | None,
    expected_extra: dict[str, Any],
    has_key: bool,
) -> None:
    spec = AnthropicMessages().build(model_info("anthropic"), messages, params, key)

    assert "system" not in spec.body  # no system message, no system field
    assert spec.body["messages"] == messages
    assert spec.body["max_tokens"] == 8
    assert {k: spec.body[k] for k in expected_extra} == expected_extra
    assert ("temperature" in spec.body) == ("temperature" in expected_extra)
    assert ("x-api-key" in spec.headers) == has_key


def test_anthropic_build_requires_max_tokens() -> None:
    with pytest.raises(ValueError, match="max_tokens"):
        AnthropicMessages().build(
            model_info("anthropic"), CHAT, {"max_tokens": None}, None
        )


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            {
                "type": "message",
                "content": [
                    {"type": "thinking", "thinking": "Let me see..."},
                    {"type": "text", "text": "Bonjour"},
                    {"type": "tool_use", "id": "t1", "name": "f", "input": {}},
                    {"type": "text", "text": ", le monde"},
                ],
                "stop_reason": "end_turn",
                "usage": {
                    "input_tokens": 50,
                    "cache_read_input_tokens": 2000,
                    "cache_creation_input_tokens": 248,
                    "output_tokens": 503,
                },
            },
            ParsedResponse(
                "Bonjour, le monde",
                "end_turn",
                Usage(
                    input_tokens=2298,
                    cached_input_tokens=2000,
                    cache_write_tokens=248,
                    output_tokens=503,
                ),
            ),
        ),
        (
            {
                "content": [{"type": "text", "text": "Cut"}],
                "stop_reason": "max_tokens",
                "usage": {"input_tokens": 12, "output_tokens": 3},
            },
            ParsedResponse(
                "Cut", "max_tokens", Usage(input_tokens=12, output_tokens=3)
            ),
        ),
        (
            {
                "content": [],
                "stop_reason": None,
                "usage": {
                    "input_tokens": "lots",
                    "cache_read_input_tokens": None,
                    "cache_creation_input_tokens": -4,
                    "output_tokens": True,
                },
            },
            ParsedResponse("", None, Usage()),
        ),
        (
            {"content": [{"type": "text", "text": 7}, "junk", {"text": "untyped"}]},
            ParsedResponse("", None, None),
        ),
        (
            {"content": [{"type": "text", "text": "x"}], "usage": ["junk"]},
            ParsedResponse("x", None, None),
        ),
    ],
)
def test_anthropic_parse(body: Any, expected: ParsedResponse) -> None:
    assert AnthropicMessages().parse(body) == expected


@pytest.mark.parametrize(
    "body",
    [
        None,
        [],
        "text",
        {},
        {"content": "a string"},
        {"type": "error", "error": {"type": "api_error", "message": "boom"}},
        {"choices": [{"message": {"content": "an OpenAI body"}}]},
    ],
)
def test_anthropic_parse_rejects_junk(body: Any) -> None:
    # A ValueError, so the client treats it as a garbled, retryable reply.
    with pytest.raises(ValueError, match="not a message"):
        AnthropicMessages().parse(body)


@pytest.mark.parametrize(
    ("status", "body_text", "expected"),
    [
        (
            529,
            '{"type": "error", "error": {"type": "overloaded_error", '
            '"message": "Overloaded"}}',
            "HTTP 529: Overloaded (overloaded_error)",
        ),
        (
            429,
            json.dumps(
                {
                    "type": "error",
                    "error": {
                        "type": "rate_limit_error",
                        "message": "Over 8,000 output tokens per minute.",
                    },
                }
            ),
            "HTTP 429: Over 8,000 output tokens per minute. (rate_limit_error)",
        ),
        (
            400,
            '{"error": {"message": "OpenAI-shaped", "type": null}}',
            "HTTP 400: OpenAI-shaped",
        ),
        (502, "<html>Bad Gateway</html>", "HTTP 502: <html>Bad Gateway</html>"),
        (500, "", "HTTP 500: (empty body)"),
        (
            500,
            '{"type": "error", "error": {}}',
            'HTTP 500: {"type": "error", "error": {}}',
        ),
        (503, '"just a string"', 'HTTP 503: "just a string"'),
    ],
)
def test_anthropic_error_message(status: int, body_text: str, expected: str) -> None:
    assert AnthropicMessages().error_message(status, body_text) == expected


# --- end to end ------------------------------------------------------------------


def test_anthropic_round_trip_through_the_client_and_simulator(
    caplog: pytest.LogCaptureFixture,
) -> None:
    system = "Be brief."
    echo_prompt = "[[sim:echo]] Bonjour, le monde"
    generated_prompt = "Tell me about rivers"
    prompts = [echo_prompt, generated_prompt, None]
    caplog.set_level(logging.DEBUG)

    with serve(tokenizer=None, seed=11) as sim:
        deluge_nb.register_model(
            "sim-anthropic-e2e",
            provider="anthropic",
            base_url=sim.base_url,
            input_price=3.0,
            output_price=15.0,
            context_window=8192,
        )
        client = deluge_nb.LLMClient(
            "sim-anthropic-e2e",
            progress=None,
            system=system,
            max_tokens=40,
            api_key=KEY,
        )
        results = client.process_prompts_sync(prompts)
        stats = sim.stats()
        direct = _post_direct(
            sim.base_url,
            {
                "model": "sim-anthropic-e2e",
                "max_tokens": 40,
                "system": system,
                "messages": [{"role": "user", "content": generated_prompt}],
            },
        )

    echo, generated, missing = results
    for row, prompt in ((echo, echo_prompt), (generated, generated_prompt)):
        assert row.error is None
        assert row.input_tokens is not None and row.output_tokens is not None
        assert row.attempts == 1
        assert row.model == "sim-anthropic-e2e"
        # The system prompt reached the server (as the top-level field: a
        # system-role message would have been refused with a 400).
        messages = [
            {"role": "system", "content": system},
            {"role": "user", "content": prompt},
        ]
        assert row.input_tokens == count_message_tokens(messages, None)
        assert row.cost_usd == pytest.approx(
            (row.input_tokens * 3.0 + row.output_tokens * 15.0) / 1e6
        )

    assert echo.response == "Bonjour, le monde"
    assert echo.finish_reason == "end_turn"
    # The same request sent by hand gets the same words: replies depend on
    # the seed and the request only.
    assert generated.response == direct["content"][0]["text"]
    assert generated.output_tokens == direct["usage"]["output_tokens"]
    assert generated.finish_reason == direct["stop_reason"]
    assert generated.finish_reason in ("end_turn", "max_tokens")
    assert missing.response is None and missing.attempts == 0

    assert stats["by_format"]["anthropic"] == {
        "requests": 2,
        "ok": 2,
        "rate_limited": 0,
    }
    assert stats["by_format"]["openai"]["requests"] == 0
    assert not [r for r in caplog.records if KEY in r.getMessage()]


def _post_direct(base_url: str, payload: dict[str, Any]) -> Any:
    async def post() -> Any:
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{base_url}/messages", json=payload) as response:
                assert response.status == 200
                return await response.json()

    return asyncio.run(post())
