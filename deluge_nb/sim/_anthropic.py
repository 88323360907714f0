"""The Anthropic Messages wire format of the simulator.

Limits are counted the way Anthropic counts them, in three buckets: one
request, the prompt's input tokens, and ``max_tokens`` output tokens are
taken at arrival; the unused part of ``max_tokens`` goes back to the output
bucket when the reply completes. Headers are ``anthropic-ratelimit-*`` with
RFC 3339 reset stamps; errors are ``{"type": "error", "error": {"type",
"message"}}``.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from deluge_nb.sim._bucket import (
    Bucket,
    format_go_duration,
    format_number,
    format_rfc3339,
    longest_wait,
    whole_seconds,
)
from deluge_nb.sim._config import SimConfig
from deluge_nb.sim._directives import content_text
from deluge_nb.sim._reply import Finish
from deluge_nb.sim._state import SimState
from deluge_nb.sim._wire import ChatRequest, Reject

# The error ``type`` Anthropic gives each status.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}

_STOP_REASONS: dict[Finish, str] = {"stop": "end_turn", "length": "max_tokens"}


class AnthropicFormat:
    """``POST /v1/messages``."""

    name = "anthropic"

    def parse(self, body: Any, config: SimConfig) -> ChatRequest:
        """Check the request body; see `deluge_nb.sim._wire.WireFormat`."""
        if not isinstance(body, dict):
            raise _invalid("The request body must be a JSON object.")

        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise _invalid("model: Field required")

        max_tokens = body.get("max_tokens")
        if max_tokens is None:
            raise _invalid("max_tokens: Field required")
        if (
            isinstance(max_tokens, bool)
            or not isinstance(max_tokens, int)
            or max_tokens < 1
        ):
            raise _invalid(f"max_tokens: expected an integer >= 1, got {max_tokens!r}")

        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _invalid("messages: expected a non-empty list of messages")
        for index, message in enumerate(messages):
            _check_message(index, message)

        system = _system_text(body.get("system"))
        if system is None:
            raise _invalid("system: expected a string or a list of text blocks")

        temperature = body.get("temperature")
        if temperature is not None and (
            isinstance(temperature, bool)
            or not isinstance(temperature, int | float)
            or not 0 <= temperature <= 1
        ):
            raise _invalid(
                f"temperature: expected a number from 0 to 1, got {temperature!r}"
            )

        if body.get("stream"):
            raise _invalid("stream: the simulator does not support streaming")

        counted = list(messages)
        if system:
            counted.insert(0, {"role": "system", "content": system})
        return ChatRequest(
            model=model,
            messages=messages,
            counted=counted,
            max_tokens=max_tokens,
            content_key=(config.seed, self.name, model, system, messages, max_tokens),
        )

    def error(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> web.Response:
        """An Anthropic error body; its ``type`` follows from the status.

        `code` and `param` are OpenAI fields with no place here; ignored.
        """
        return _error(status, message, headers)

    def context_error(
        self, input_tokens: int, max_tokens: int, window: int
    ) -> web.Response:
        """The 400 Anthropic gives when input and output cannot both fit."""
        return self.error(
            400,
            "input length and `max_tokens` exceed context limit: "
            f"{input_tokens} + {max_tokens} > {window}, decrease input length "
            "or `max_tokens` and try again",
        )

    def admit(self, state: SimState, input_tokens: int, max_tokens: int) -> None:
        """Take 1 request, the input tokens and ``max_tokens``, or raise a 429."""
        inputs = state.input_tokens_bucket
        outputs = state.output_tokens_bucket
        for name, bucket, amount in (
            ("input tokens", inputs, input_tokens),
            ("output tokens", outputs, max_tokens),
        ):
            if bucket is not None and amount > bucket.limit:
                raise Reject(
                    self.error(
                        429,
                        f"Request too large for {name} per minute: the limit is "
                        f"{format_number(bucket.limit)} and this request needs "
                        f"{amount}. It can never succeed as it is; reduce the "
                        "prompt or max_tokens.",
                        headers={"x-should-retry": "false"},
                    )
                )

        refusal = longest_wait(
            [
                ("requests", state.anthropic_requests_bucket, 1),
                ("input tokens", inputs, input_tokens),
                ("output tokens", outputs, max_tokens),
            ]
        )
        if refusal is not None:
            wait, name, bucket, _ = refusal
            raise Reject(
                self.error(
                    429,
                    f"This request would exceed the rate limit of "
                    f"{format_number(bucket.limit)} {name} per minute. Please "
                    f"try again in {format_go_duration(wait)}.",
                    headers={"retry-after": str(whole_seconds(wait))},
                )
            )

        if state.anthropic_requests_bucket is not None:
            state.anthropic_requests_bucket.take(1)
        if inputs is not None:
            inputs.take(input_tokens)
        if outputs is not None:
            outputs.take(max_tokens)

    def settle(self, state: SimState, max_tokens: int, output_tokens: int) -> None:
        """Refund the unused part of ``max_tokens`` to the output bucket."""
        if state.output_tokens_bucket is not None:
            state.output_tokens_bucket.give_back(max(0, max_tokens - output_tokens))

    def reply(
        self,
        chat: ChatRequest,
        text: str,
        input_tokens: int,
        output_tokens: int,
        finish: Finish,
    ) -> dict[str, Any]:
        """A ``message`` object with one text block."""
        return {
            "id": f"msg_sim{uuid.uuid4().hex[:24]}",
            "type": "message",
            "role": "assistant",
            "model": chat.model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": _STOP_REASONS[finish],
            "stop_sequence": None,
            "usage": {
                "input_tokens": input_tokens,
                "output_tokens": output_tokens,
                "cache_read_input_tokens": 0,
                "cache_creation_input_tokens": 0,
            },
        }

    def limit_headers(self, state: SimState) -> dict[str, str]:
        """``anthropic-ratelimit-{requests,input-tokens,output-tokens,tokens}-*``.

        The ``tokens`` set repeats whichever of the input and output buckets
        is most restrictive now: the smaller fraction of its limit left, and
        on a tie the later reset.
        """
        now = state.wall_clock()
        headers: dict[str, str] = {}
        for name, bucket in (
            ("requests", state.anthropic_requests_bucket),
            ("input-tokens", state.input_tokens_bucket),
            ("output-tokens", state.output_tokens_bucket),
        ):
            if bucket is not None:
                headers.update(_bucket_headers(name, bucket, now))

        token_buckets = [
            b
            for b in (state.input_tokens_bucket, state.output_tokens_bucket)
            if b is not None
        ]
        if token_buckets:
            tightest = min(
                token_buckets,
                key=lambda b: (b.remaining() / b.limit, -b.time_to_full()),
            )
            headers.update(_bucket_headers("tokens", tightest, now))
        return headers


def _bucket_headers(name: str, bucket: Bucket, now: float) -> dict[str, str]:
    prefix = f"anthropic-ratelimit-{name}"
    return {
        f"{prefix}-limit": str(math.floor(bucket.limit)),
        f"{prefix}-remaining": str(bucket.remaining()),
        f"{prefix}-reset": format_rfc3339(now + bucket.time_to_full()),
    }


def _check_message(index: int, message: Any) -> None:
    where = f"messages.{index}"
    if not isinstance(message, dict):
        raise _invalid(f"{where}: expected an object with 'role' and 'content'")
    role = message.get("role")
    if role == "system":
        raise _invalid(
            f'{where}.role: unexpected role "system". The Messages API takes a '
            "system prompt in the top-level `system` parameter, not as a message."
        )
    if role not in ("user", "assistant"):
        raise _invalid(f"{where}.role: expected 'user' or 'assistant', got {role!r}")
    content = message.get("content")
    if isinstance(content, str):
        return
    if not isinstance(content, list) or not all(
        isinstance(block, dict) and isinstance(block.get("type"), str)
        for block in content
    ):
        raise _invalid(f"{where}.content: expected a string or a list of blocks")


def _system_text(system: Any) -> str | None:
    """The system prompt as text ("" when absent); None when malformed."""
    if system is None:
        return ""
    if isinstance(system, str):
        return system
    if isinstance(system, list) and all(
        isinstance(block, dict)
        and block.get("type") == "text"
        and isinstance(block.get("text"), str)
        for block in system
    ):
        return content_text(system)
    return None


def _error(
    status: int, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    default = "api_error" if status >= 500 else "invalid_request_error"
    error = {"type": _ERROR_TYPES.get(status, default), "message": message}
    body = {"type": "error", "error": error}
    return web.json_response(body, status=status, headers=headers)


def _invalid(message: str) -> Reject:
    return Reject(_error(400, message))
