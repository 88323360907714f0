"""What every provider offers the client."""

from __future__ import annotations

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
