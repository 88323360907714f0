"""The OpenAI chat-completions wire format of the simulator.

Limits are counted the way OpenAI counts them: one request, and prompt
tokens plus ``max_tokens`` from the tokens bucket at arrival, the unused
part refunded when the reply completes. Headers are ``x-ratelimit-*`` with
Go-style durations; errors are ``{"error": {"message", "type", "param",
"code"}}``.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from deluge_nb.sim._bucket import (
    ceil_ms,
    format_go_duration,
    format_number,
    longest_wait,
    whole_seconds,
)
from deluge_nb.sim._config import SimConfig
from deluge_nb.sim._reply import Finish
from deluge_nb.sim._state import SimState
from deluge_nb.sim._wire import ChatRequest, Reject


class OpenAIFormat:
    """``POST /v1/chat/completions``."""

    name = "openai"

    def parse(self, body: Any, config: SimConfig) -> ChatRequest:
        """Check the request body; see `deluge_nb.sim._wire.WireFormat`."""
        if not isinstance(body, dict):
            raise Reject(self.error(400, "The request body must be a JSON object."))

        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise Reject(self._missing("model"))

        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise Reject(self._missing("messages"))
        for index, message in enumerate(messages):
            ok = (
                isinstance(message, dict)
                and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str | list | type(None))
            )
            if not ok:
                raise Reject(
                    self.error(
                        400,
                        f"Invalid value for 'messages[{index}]': expected an "
                        "object with a string 'role' and a string or list "
                        "'content'.",
                        code="invalid_value",
                        param=f"messages[{index}]",
                    )
                )

        if body.get("stream"):
            raise Reject(
                self.error(
                    400, "The simulator does not support stream=true.", param="stream"
                )
            )

        temperature = body.get("temperature")
        if temperature is not None and (
            isinstance(temperature, bool) or not isinstance(temperature, int | float)
        ):
            raise Reject(
                self.error(400, "'temperature' must be a number.", param="temperature")
            )

        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        if max_tokens is None:
            max_tokens = config.default_max_tokens
        if (
            isinstance(max_tokens, bool)
            or not isinstance(max_tokens, int)
            or max_tokens < 1
        ):
            raise Reject(
                self.error(
                    400,
                    f"Invalid 'max_tokens': {max_tokens!r}; expected an integer >= 1.",
                    code="invalid_value",
                    param="max_tokens",
                )
            )
        return ChatRequest(
            model=model,
            messages=messages,
            counted=messages,
            max_tokens=max_tokens,
            content_key=(config.seed, model, messages, max_tokens),
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
        """An OpenAI error body; its ``type`` follows from the status."""
        if status == 429:
            type_ = "requests"
            code = code or "rate_limit_exceeded"
        elif status >= 500:
            type_ = "server_error"
        else:
            type_ = "invalid_request_error"
        return _error(status, message, type_, code=code, param=param, headers=headers)

    def context_error(
        self, input_tokens: int, max_tokens: int, window: int
    ) -> web.Response:
        """OpenAI's ``context_length_exceeded``."""
        return self.error(
            400,
            f"This model's maximum context length is {window} tokens. However, "
            f"you requested {input_tokens + max_tokens} tokens ({input_tokens} in "
            f"the messages, {max_tokens} in the completion). Please reduce the "
            "length of the messages or completion.",
            code="context_length_exceeded",
            param="messages",
        )

    def admit(self, state: SimState, input_tokens: int, max_tokens: int) -> None:
        """Take 1 request and prompt + ``max_tokens`` tokens, or raise a 429."""
        reserved = input_tokens + max_tokens
        tokens = state.tokens_bucket
        if tokens is not None and reserved > tokens.limit:
            raise Reject(
                _error(
                    429,
                    "Request too large for tokens per min: Limit "
                    f"{format_number(tokens.limit)}, Requested {reserved}. The "
                    "input or output tokens must be reduced in order to run "
                    "successfully.",
                    "tokens",
                    code="rate_limit_exceeded",
                    headers={"x-should-retry": "false"},
                )
            )

        refusal = longest_wait(
            [
                ("requests", state.requests_bucket, 1),
                ("tokens", tokens, reserved),
            ]
        )
        if refusal is not None:
            wait, name, bucket, amount = refusal
            used = math.floor(bucket.limit) - bucket.remaining()
            raise Reject(
                _error(
                    429,
                    f"Rate limit reached for {name} per min: Limit "
                    f"{format_number(bucket.limit)}, Used {used}, Requested "
                    f"{amount}. Please try again in {format_go_duration(wait)}.",
                    name,
                    code="rate_limit_exceeded",
                    headers={
                        "retry-after": str(whole_seconds(wait)),
                        "retry-after-ms": str(max(1, round(wait * 1000))),
                    },
                )
            )

        if state.requests_bucket is not None:
            state.requests_bucket.take(1)
        if tokens is not None:
            tokens.take(reserved)

    def settle(self, state: SimState, max_tokens: int, output_tokens: int) -> None:
        """Refund the unused part of ``max_tokens`` to the tokens bucket."""
        if state.tokens_bucket is not None:
            state.tokens_bucket.give_back(max(0, max_tokens - output_tokens))

    def reply(
        self,
        chat: ChatRequest,
        text: str,
        input_tokens: int,
        output_tokens: int,
        finish: Finish,
    ) -> dict[str, Any]:
        """A ``chat.completion`` object."""
        return {
            "id": f"chatcmpl-sim{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": chat.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish,
                }
            ],
            "usage": {
                "prompt_tokens": input_tokens,
                "completion_tokens": output_tokens,
                "total_tokens": input_tokens + output_tokens,
                "prompt_tokens_details": {"cached_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0},
            },
        }

    def limit_headers(self, state: SimState) -> dict[str, str]:
        """``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``."""
        headers: dict[str, str] = {}
        for name, bucket in (
            ("requests", state.requests_bucket),
            ("tokens", state.tokens_bucket),
        ):
            if bucket is None:
                continue
            reset = ceil_ms(bucket.time_to_full())
            headers[f"x-ratelimit-limit-{name}"] = str(math.floor(bucket.limit))
            headers[f"x-ratelimit-remaining-{name}"] = str(bucket.remaining())
            headers[f"x-ratelimit-reset-{name}"] = format_go_duration(reset)
        return headers

    def _missing(self, param: str) -> web.Response:
        return self.error(
            400,
            f"Missing required parameter: '{param}'.",
            code="missing_required_parameter",
            param=param,
        )


def _error(
    status: int,
    message: str,
    type_: str,
    *,
    code: str | None = None,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return web.json_response(body, status=status, headers=headers)
