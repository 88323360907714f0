"""Small value types shared by the layers."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class Usage:
    """Token usage of one response.

    ``input_tokens`` counts every prompt token, cache reads
    (``cached_input_tokens``) and cache writes (``cache_write_tokens``)
    included; ``output_tokens`` counts every generated token, reasoning
    included.
    """

    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cache_write_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass
class Completion:
    """The result of one prompt: the fields become the result columns.

    A row that failed has ``error`` set and ``response`` None; a row whose
    prompt was missing has every field empty and ``attempts == 0``.
    """

    response: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost_usd: float | None = None
    model: str | None = None
    finish_reason: str | None = None
    latency_s: float | None = None
    attempts: int = 0
    cached: bool = False
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.response is not None


RESULT_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(Completion))
