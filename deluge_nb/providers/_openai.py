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
from ._base import ParsedResponse, RequestSpec


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
            text = choice["message"].get("content") or ""
            finish_reason = choice.get("finish_reason")
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise MalformedResponseError(
                f"response is not a chat completion: {str(body)[:200]}"
            ) from exc
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
    prompt_details = raw.get("prompt_tokens_details") or {}
    completion_details = raw.get("completion_tokens_details") or {}
    return Usage(
        input_tokens=int(raw.get("prompt_tokens") or 0),
        cached_input_tokens=int(prompt_details.get("cached_tokens") or 0),
        output_tokens=int(raw.get("completion_tokens") or 0),
        reasoning_tokens=int(completion_details.get("reasoning_tokens") or 0),
    )
