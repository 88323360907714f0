"""`SimConfig`: the settings of one simulated server, validated on creation."""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Mapping
from dataclasses import dataclass

# The faults `SimConfig.faults` can inject, in the order their rates are
# laid end to end on [0, 1) when a request draws its number.
FAULT_KINDS = ("500", "502", "503", "529", "429", "reset", "hang", "truncated")
STORM = "429_storm"
ALL_FAULT_KINDS = (*FAULT_KINDS, STORM)

# Rates summing to a hair above 1 because of float rounding are accepted.
_RATE_SLACK = 1e-9


@dataclass(frozen=True)
class SimConfig:
    """Settings of one simulated server.

    Parameters
    ----------
    requests_per_minute : float or None
        Requests allowed per minute; ``None`` means unlimited. The OpenAI and
        the Anthropic endpoints each have a requests bucket of this size.
    tokens_per_minute : float or None
        Tokens allowed per minute on the OpenAI endpoint, counted the way
        OpenAI counts them: prompt tokens plus ``max_tokens`` at arrival, the
        unused part refunded when the reply completes. ``None`` means
        unlimited.
    input_tokens_per_minute : float or None
        Input tokens allowed per minute on the Anthropic endpoint, taken at
        arrival. ``None`` means unlimited.
    output_tokens_per_minute : float or None
        Output tokens allowed per minute on the Anthropic endpoint:
        ``max_tokens`` is taken at arrival and the unused part refunded when
        the reply completes, as Anthropic estimates and then corrects it.
        ``None`` means unlimited.
    burst_seconds : float
        Each bucket holds ``limit * burst_seconds / 60`` and refills
        continuously at ``limit / 60`` per second. Buckets start full. A
        small value models providers that reject short bursts well below the
        per-minute figure.
    latency_s : float
        Seconds before the reply starts (time to first token).
    latency_per_output_token_s : float
        Extra seconds per output token.
    context_window : int
        Prompt tokens plus ``max_tokens`` above this get a 400.
    rate_limit_headers : bool
        Send the rate-limit headers (``x-ratelimit-*`` or
        ``anthropic-ratelimit-*``) on every response.
    seed : int
        Seed of the deterministic replies and of the fault draws.
    default_max_tokens : int
        ``max_tokens`` assumed when an OpenAI-format request gives none (the
        Anthropic format requires it).
    tokenizer : str or None
        Encoding passed to `deluge_nb._tokens` (``None`` selects its
        labelled approximation).
    faults : mapping of str to float
        Probability per request of each injected fault: ``"500"``,
        ``"502"``, ``"503"``, ``"529"``, ``"429"``, ``"reset"``, ``"hang"``,
        ``"truncated"`` and ``"429_storm"``. Each is in ``[0, 1]`` and
        together they sum to at most 1. See the package docstring.
    fault_retry_after_s : float
        The wait an injected ``"429"`` asks for, in ``retry-after`` (whole
        seconds, rounded up) and ``retry-after-ms``.
    storm_s : float
        How long a ``"429_storm"`` lasts, in seconds of the server's clock.
    """

    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    input_tokens_per_minute: float | None = None
    output_tokens_per_minute: float | None = None
    burst_seconds: float = 2.0
    latency_s: float = 0.0
    latency_per_output_token_s: float = 0.0
    context_window: int = 8192
    rate_limit_headers: bool = True
    seed: int = 0
    default_max_tokens: int = 64
    tokenizer: str | None = "o200k_base"
    faults: Mapping[str, float] = dataclasses.field(default_factory=dict, hash=False)
    fault_retry_after_s: float = 1.0
    storm_s: float = 5.0

    def __post_init__(self) -> None:
        for name in (
            "requests_per_minute",
            "tokens_per_minute",
            "input_tokens_per_minute",
            "output_tokens_per_minute",
        ):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive or None, got {value!r}")
        if not self.burst_seconds > 0:
            raise ValueError(
                f"burst_seconds must be positive, got {self.burst_seconds}"
            )
        if self.latency_s < 0 or self.latency_per_output_token_s < 0:
            raise ValueError("latencies must not be negative")
        if self.context_window < 1 or self.default_max_tokens < 1:
            raise ValueError("context_window and default_max_tokens must be >= 1")
        if not 0 <= self.fault_retry_after_s < math.inf:
            raise ValueError(
                "fault_retry_after_s must be a finite number >= 0, got "
                f"{self.fault_retry_after_s!r}"
            )
        if not 0 < self.storm_s < math.inf:
            raise ValueError(f"storm_s must be positive, got {self.storm_s!r}")
        # A read-only copy, so the frozen config cannot change under the app.
        object.__setattr__(
            self, "faults", types.MappingProxyType(_checked_faults(self.faults))
        )


def _checked_faults(faults: Mapping[str, float]) -> dict[str, float]:
    """Validate fault rates; return them as a plain dict of floats."""
    if not isinstance(faults, Mapping):
        raise ValueError(f"faults must be a mapping of kind to rate, got {faults!r}")

    checked: dict[str, float] = {}
    for kind, rate in faults.items():
        if kind not in ALL_FAULT_KINDS:
            raise ValueError(
                f"unknown fault kind {kind!r}; expected one of "
                f"{', '.join(ALL_FAULT_KINDS)}"
            )
        if isinstance(rate, bool) or not isinstance(rate, int | float):
            raise ValueError(f"fault rate of {kind!r} must be a number, got {rate!r}")
        if not 0 <= rate <= 1:
            raise ValueError(f"fault rate of {kind!r} must be in [0, 1], got {rate!r}")
        checked[kind] = float(rate)

    total = sum(checked.values())
    if total > 1 + _RATE_SLACK:
        raise ValueError(f"fault rates must sum to at most 1, got {total:g}")
    return checked
