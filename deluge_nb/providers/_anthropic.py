"""Anthropic Messages (``POST /v1/messages``).

The request differs from OpenAI's in three ways that matter here: the
system prompt is a top-level ``system`` field, not a message; ``max_tokens``
is required; the key goes in ``x-api-key`` with an ``anthropic-version``
header. The reply's ``content`` is a list of blocks, of which the ``text``
ones make the answer.

``usage.input_tokens`` excludes cache reads and writes, which come as
``cache_read_input_tokens`` and ``cache_creation_input_tokens``; the
`deluge_nb._types.Usage` built here counts all three in ``input_tokens``,
as that type promises.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from .._models import ModelInfo
from .._types import Usage
from ._base import ParsedResponse, RequestSpec, content_text, token_count
from ._openai import MalformedResponseError

ANTHROPIC_VERSION = "2023-06-01"


class AnthropicMessages:
    """The ``/messages`` endpoint."""

    def build(
        self,
        model: ModelInfo,
        messages: Sequence[Mapping[str, Any]],
        params: Mapping[str, Any],
        api_key: str | None,
    ) -> RequestSpec:
        """The HTTP request for one chat.

        Parameters
        ----------
        model : ModelInfo
            Supplies ``base_url`` and the model name sent on the wire.
        messages : sequence of mapping
            OpenAI-style chat messages; ``system`` ones are joined (with a
            blank line between) into the top-level ``system`` field.
        params : mapping
            Must hold ``max_tokens``; ``temperature`` and any other entry
            are sent when not None.
        api_key : str or None
            Sent as ``x-api-key`` when given.

        Returns
        -------
        RequestSpec

        Raises
        ------
        ValueError
            If ``params`` has no ``max_tokens``: the API requires it.
        """
        if params.get("max_tokens") is None:
            raise ValueError("the Anthropic Messages API requires max_tokens")

        system_parts: list[str] = []
        conversation: list[dict[str, Any]] = []
        for message in messages:
            if message.get("role") == "system":
                content = content_text(message.get("content"))
                system_parts.append(
                    str(message.get("content")) if content is None else content
                )
            else:
                conversation.append(dict(message))

        body: dict[str, Any] = {"model": model.api_model, "messages": conversation}
        if system_parts:
            body["system"] = "\n\n".join(system_parts)
        for name, value in params.items():
            if value is not None:
                body[name] = value

        headers = {
            "anthropic-version": ANTHROPIC_VERSION,
            "content-type": "application/json",
        }
        if api_key:
            headers["x-api-key"] = api_key
        return RequestSpec(f"{model.base_url}/messages", headers, body)

    def parse(self, body: Any) -> ParsedResponse:
        """Text, stop reason and usage of a ``message`` body.

        Raises
        ------
        MalformedResponseError
            If `body` has no list of ``content`` blocks.
        """
        content = body.get("content") if isinstance(body, Mapping) else None
        if not isinstance(content, list):
            raise MalformedResponseError(
                f"response is not a message: {str(body)[:200]}"
            )
        text = "".join(
            block["text"]
            for block in content
            if isinstance(block, Mapping)
            and block.get("type") == "text"
            and isinstance(block.get("text"), str)
        )
        stop_reason = body.get("stop_reason")
        finish_reason = stop_reason if isinstance(stop_reason, str) else None
        return ParsedResponse(text, finish_reason, _usage(body.get("usage")))

    def error_message(self, status: int, body_text: str) -> str:
        """``"HTTP 529: Overloaded (overloaded_error)"`` from an error body.

        Falls back to the start of the raw body when it is not Anthropic's
        ``{"type": "error", "error": {"type", "message"}}``.
        """
        try:
            error = json.loads(body_text).get("error")
        except (ValueError, AttributeError):
            error = None
        if isinstance(error, Mapping) and error.get("message"):
            detail = str(error["message"])
            kind = error.get("type")
            if isinstance(kind, str) and kind:
                detail += f" ({kind})"
        else:
            detail = body_text.strip()[:500] or "(empty body)"
        return f"HTTP {status}: {detail}"


def _usage(raw: Any) -> Usage | None:
    if not isinstance(raw, Mapping):
        return None
    fresh = token_count(raw.get("input_tokens"))
    read = token_count(raw.get("cache_read_input_tokens"))
    written = token_count(raw.get("cache_creation_input_tokens"))
    return Usage(
        input_tokens=fresh + read + written,
        cached_input_tokens=read,
        cache_write_tokens=written,
        output_tokens=token_count(raw.get("output_tokens")),
    )
