"""OpenAI chat completions, and every server that speaks the same protocol.

``usage.prompt_tokens`` includes ``prompt_tokens_details.cached_tokens``;
``usage.completion_tokens`` includes
``completion_tokens_details.reasoning_tokens``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from .._models import ModelInfo
from .._types import Usage
from ._base import (
    ParsedResponse,
    RequestSpec,
    content_text,
    mapping_or_empty,
    token_count,
)


class MalformedResponseError(ValueError):
    """A 200 whose body is not a chat completion."""


class OpenAIChat:
    """The ``/chat/completions`` endpoint."""

    def build(
        self,
        model: ModelInfo,
        messages: Sequence[Mapping[str, Any]],
        params: Mapping[str, Any],
        api_key: str | None,
    ) -> RequestSpec:
        body: dict[str, Any] = {"model": model.api_model, "messages": list(messages)}
        for name, value in params.items():
            if value is not None:
                body[name] = value
        headers = {"Content-Type": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        return RequestSpec(f"{model.base_url}/chat/completions", headers, body)

    def parse(self, body: Any) -> ParsedResponse:
        try:
            choice = body["choices"][0]
            text = content_text(choice["message"].get("content"))
            finish_reason = choice.get("finish_reason")
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise MalformedResponseError(
                f"response is not a chat completion: {str(body)[:200]}"
            ) from exc
        if text is None:
            raise MalformedResponseError(
                f"message content is neither text nor parts: {str(body)[:200]}"
            )
        if not isinstance(finish_reason, str):
            finish_reason = None
        return ParsedResponse(text, finish_reason, _usage(body.get("usage")))

    def error_message(self, status: int, body_text: str) -> str:
        try:
            error = json.loads(body_text).get("error")
        except (ValueError, AttributeError):
            error = None
        if isinstance(error, Mapping) and error.get("message"):
            detail = str(error["message"])
        elif isinstance(error, str):
            detail = error
        else:
            detail = body_text.strip()[:500] or "(empty body)"
        return f"HTTP {status}: {detail}"


def _usage(raw: Any) -> Usage | None:
    if not isinstance(raw, Mapping):
        return None
    prompt_details = mapping_or_empty(raw.get("prompt_tokens_details"))
    completion_details = mapping_or_empty(raw.get("completion_tokens_details"))
    return Usage(
        input_tokens=token_count(raw.get("prompt_tokens")),
        cached_input_tokens=token_count(prompt_details.get("cached_tokens")),
        output_tokens=token_count(raw.get("completion_tokens")),
        reasoning_tokens=token_count(completion_details.get("reasoning_tokens")),
    )
