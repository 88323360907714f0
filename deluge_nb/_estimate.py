"""``estimate()``: what a job would send and cost, before anything is sent.

It plans the job exactly as the job would (``_plan.py``): missing prompts,
duplicates, rows the cache already holds, rows that can never fit. Input
tokens are the same estimates the limiter reserves; output is counted at
``max_tokens`` per request unless ``expected_output_tokens`` says
otherwise, so ``cost_usd`` is an upper bound by default.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd

from ._errors import ConfigurationError
from ._plan import plan_requests
from ._tokens import is_exact
from ._types import Usage

if TYPE_CHECKING:
    from ._client import LLMClient, Prompt

# Providers whose batch engines bill half the realtime price.
BATCH_DISCOUNT = {"openai": 0.5, "anthropic": 0.5}


@dataclass(frozen=True)
class Estimate:
    """A job's size and cost, per row and in total.

    ``rows`` has one row per input row, by position: ``input_tokens`` and
    ``output_tokens`` (what its request would use; 0 for rows served by a
    duplicate, the cache, or nothing), ``cost_usd``, ``cached``,
    ``duplicate`` and ``problem`` (why it can never be sent).
    """

    rows: pd.DataFrame
    total_rows: int
    missing_rows: int
    requests: int
    duplicate_rows: int
    cached_rows: int
    never_fit_rows: int
    input_tokens: int
    output_tokens: int
    cost_usd: float
    batch_cost_usd: float | None
    wall_time_s: float
    limits: str
    tokens_exact: bool
    output_is_bound: bool = True

    def summary(self) -> dict[str, object]:
        return {
            "rows": self.total_rows,
            "missing rows (not sent)": self.missing_rows,
            "requests to send": self.requests,
            "duplicate rows (sent once)": self.duplicate_rows,
            "rows already cached": self.cached_rows,
            "rows that can never fit": self.never_fit_rows,
            "input tokens": self.input_tokens,
            (
                "output tokens (at most)"
                if self.output_is_bound
                else "output tokens (expected)"
            ): self.output_tokens,
            "cost, realtime (USD)": round(self.cost_usd, 6),
            "cost, batch (USD)": (
                None if self.batch_cost_usd is None else round(self.batch_cost_usd, 6)
            ),
            "wall time under the limits (s)": round(self.wall_time_s, 1),
            "limits": self.limits,
            "token counts": "exact (tiktoken)" if self.tokens_exact else "estimated",
        }

    def __repr__(self) -> str:
        width = max(len(k) for k in self.summary())
        lines = [f"{k:<{width}}  {v}" for k, v in self.summary().items()]
        return "Estimate\n" + "\n".join(lines)

    def _repr_html_(self) -> str:
        frame = pd.DataFrame({"value": [str(v) for v in self.summary().values()]})
        frame.index = pd.Index(list(self.summary()))
        table: str = frame.to_html(header=False)
        return "<b>deluge_nb estimate</b>" + table


def estimate_prompts(
    client: LLMClient,
    prompts: Sequence[Prompt],
    *,
    expected_output_tokens: int | None = None,
    limits: Mapping[str, float | None] | None = None,
) -> Estimate:
    """Plan ``prompts`` as a job would and price it; sends nothing.

    ``limits`` (``max_requests_per_minute``, ``max_tokens_per_minute`` and
    their input and output forms) override the client's limiter for the
    wall-time figure only.
    """
    if expected_output_tokens is not None and not (
        isinstance(expected_output_tokens, int)
        and not isinstance(expected_output_tokens, bool)
        and expected_output_tokens >= 0
    ):
        raise ConfigurationError(
            "expected_output_tokens must be a whole number, 0 or more, got "
            f"{expected_output_tokens!r}"
        )
    plan = plan_requests(client, prompts)
    output_each = (
        client.max_tokens
        if expected_output_tokens is None
        else min(client.max_tokens, expected_output_tokens)
    )
    cached_keys: set[str] = set()
    if client.cache is not None:
        cached_keys = set(client.cache.get_many([r.key for r in plan.requests]))

    n = plan.total
    input_col = [0] * n
    output_col = [0] * n
    cost_col = [0.0] * n
    cached_col = [False] * n
    duplicate_col = [False] * n
    problem_col: list[str | None] = [None] * n

    sent = never_fit = duplicates = cached_rows = 0
    total_in = total_out = 0
    cost = batch = reserve = 0.0
    discounted = True
    for request in plan.requests:
        first, rest = request.first, request.positions[1:]
        for position in rest:
            duplicate_col[position] = True
        duplicates += len(rest)
        if request.problem is not None:
            never_fit += len(request.positions)
            for position in request.positions:
                problem_col[position] = request.problem
            continue
        if request.key in cached_keys:
            cached_rows += len(request.positions)
            for position in request.positions:
                cached_col[position] = True
            continue

        usage = Usage(input_tokens=request.input_estimate, output_tokens=output_each)
        row_cost = request.model.cost_usd(usage)
        input_col[first], output_col[first], cost_col[first] = (
            request.input_estimate,
            output_each,
            row_cost,
        )
        sent += 1
        total_in += request.input_estimate
        total_out += output_each
        cost += row_cost
        reserve += request.input_estimate + client.max_tokens
        share = BATCH_DISCOUNT.get(request.model.provider)
        if share is None:
            discounted = False
        else:
            batch += row_cost * share

    snap = client.limiter.snapshot()
    limits = limits or {}
    rpm = limits.get("max_requests_per_minute") or snap.max_requests_per_minute
    tpm = limits.get("max_tokens_per_minute") or snap.max_tokens_per_minute
    itpm = limits.get("max_input_tokens_per_minute") or snap.max_input_tokens_per_minute
    otpm = (
        limits.get("max_output_tokens_per_minute") or snap.max_output_tokens_per_minute
    )
    minutes = max(
        _minutes(sent, rpm),
        _minutes(reserve, tpm),
        _minutes(total_in, itpm),
        _minutes(sent * client.max_tokens, otpm),
    )
    rows = pd.DataFrame(
        {
            "input_tokens": pd.array(input_col, dtype="Int64"),
            "output_tokens": pd.array(output_col, dtype="Int64"),
            "cost_usd": pd.array(cost_col, dtype="Float64"),
            "cached": pd.array(cached_col, dtype="boolean"),
            "duplicate": pd.array(duplicate_col, dtype="boolean"),
            "problem": pd.array(problem_col, dtype="string"),
        }
    )
    return Estimate(
        rows=rows,
        total_rows=n,
        missing_rows=len(plan.missing),
        requests=sent,
        duplicate_rows=duplicates,
        cached_rows=cached_rows,
        never_fit_rows=never_fit,
        input_tokens=total_in,
        output_tokens=total_out,
        cost_usd=cost,
        batch_cost_usd=batch if discounted and sent else (0.0 if not sent else None),
        wall_time_s=minutes * 60.0,
        limits=f"{_fmt(rpm)} requests/min, {_fmt(tpm)} tokens/min",
        tokens_exact=all(is_exact(m.tokenizer) for m in client.models),
        output_is_bound=expected_output_tokens is None,
    )


def _minutes(amount: float, per_minute: float) -> float:
    return 0.0 if math.isinf(per_minute) else amount / per_minute


def _fmt(value: float) -> str:
    return "no limit" if math.isinf(value) else f"{value:,.0f}"
