"""What every provider offers the client."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .._models import ModelInfo
from .._types import Usage


@dataclass(frozen=True)
class RequestSpec:
    """One HTTP request, ready to send. ``headers`` may hold a secret."""

    url: str
    headers: Mapping[str, str]
    body: Mapping[str, Any]

    def __repr__(self) -> str:  # never show the Authorization header
        return f"RequestSpec(url={self.url!r}, model={self.body.get('model')!r})"


@dataclass(frozen=True)
class ParsedResponse:
    """What a successful response says."""

    text: str
    finish_reason: str | None
    usage: Usage | None


class Provider(Protocol):
    def build(
        self,
        model: ModelInfo,
        messages: Sequence[Mapping[str, Any]],
        params: Mapping[str, Any],
        api_key: str | None,
    ) -> RequestSpec: ...

    def parse(self, body: Any) -> ParsedResponse: ...

    def error_message(self, status: int, body_text: str) -> str: ...


def content_text(content: Any) -> str | None:
    """A message's content as text: a string, or its text parts joined.

    Both OpenAI-compatible servers and Anthropic may send content as a
    list of parts (``[{"type": "text", "text": "..."}]``); parts that are
    not text (images, tool calls) add nothing. None is empty text. Any
    other shape gives None: the caller decides it is malformed.
    """
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, Mapping) and isinstance(part.get("text"), str)
        )
    return None


def token_count(value: Any) -> int:
    """A token count from the wire; missing, negative or junk counts as 0."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    if not math.isfinite(value) or value < 0:
        return 0
    return int(value)


def mapping_or_empty(value: Any) -> Mapping[str, Any]:
    """``value`` if it is a mapping, else an empty one (junk details)."""
    return value if isinstance(value, Mapping) else {}
