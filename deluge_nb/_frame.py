"""The pandas accessor: ``df.deluge`` and ``s.deluge``.

Prompts come from a column or from a ``str.format`` template over columns.
A row whose prompt, or any field its template uses, is missing (None, NaN,
NaT, pd.NA) is not sent and gets empty result columns. Other values are
formatted with ``format()``, so 42 becomes "42" and ``{price:.2f}`` works.
Results are written back by position, so any index works: filtered,
shuffled, duplicated or a MultiIndex. The input frame is never changed.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import pandas as pd

from ._client import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_TOKENS,
    DEFAULT_TIMEOUT_S,
    CacheOption,
    ErrorsMode,
    LLMClient,
    Prompt,
    is_missing,
)
from ._errors import ConfigurationError
from ._estimate import Estimate, estimate_prompts
from ._job import Job
from ._stats import StatsSnapshot
from ._types import RESULT_COLUMNS, Completion

LIMIT_OPTIONS = (
    "max_requests_per_minute",
    "max_tokens_per_minute",
    "max_input_tokens_per_minute",
    "max_output_tokens_per_minute",
    "max_concurrent_requests",
)

RESULT_DTYPES = {
    "response": "string",
    "input_tokens": "Int64",
    "output_tokens": "Int64",
    "cost_usd": "Float64",
    "model": "string",
    "finish_reason": "string",
    "latency_s": "Float64",
    "attempts": "Int64",
    "cached": "boolean",
    "error": "string",
}


def _as_prompt(value: Any) -> Prompt:
    """A cell as a prompt: text, a list of chat messages, or None."""
    if isinstance(value, str):
        return value
    if (
        isinstance(value, Sequence)
        and value
        and all(isinstance(m, Mapping) for m in value)
    ):
        return list(value)
    if is_missing(value):
        return None
    return format(value)


def template_fields(template: str) -> list[str]:
    """The column names a ``str.format`` template refers to."""
    fields = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigurationError(
            f"template {template!r} is not a valid str.format template ({exc}); "
            "write literal braces as {{ and }}"
        ) from exc
    for _, name, _, _ in parsed:
        if name is None:
            continue
        if name == "" or name.isdigit():
            raise ConfigurationError(
                f"template {template!r} has a positional field; name a column "
                "instead, e.g. {text}"
            )
        if "." in name or "[" in name:
            # {text.attr} and {text[0]} would reach into the cell's object.
            raise ConfigurationError(
                f"template field {{{name}}} is not a plain column name; use "
                "{column} or {column:format_spec}"
            )
        if name not in fields:
            fields.append(name)
    return fields


def render_prompts(frame: pd.DataFrame, prompt: str | None) -> list[Prompt]:
    """One prompt per row, in row order; None where the row has none."""
    if prompt is None:
        if "prompt" not in frame.columns:
            raise ConfigurationError(
                "say which column holds the prompts, e.g. prompt='text', or give a "
                "template over columns, e.g. prompt='Summarize: {text}'"
            )
        prompt = "prompt"

    if prompt in frame.columns:
        column = frame[prompt]
        if isinstance(column, pd.DataFrame):
            raise ConfigurationError(f"more than one column is named {prompt!r}")
        return [_as_prompt(v) for v in column.tolist()]

    fields = template_fields(prompt)
    if not fields:
        raise ConfigurationError(
            f"{prompt!r} is neither a column nor a template over columns; columns "
            f"are {list(frame.columns)[:20]}"
        )
    unknown = [f for f in fields if f not in frame.columns]
    if unknown:
        raise ConfigurationError(
            f"template refers to {unknown}, which are not columns; columns are "
            f"{list(frame.columns)[:20]}"
        )

    repeated = [f for f in fields if isinstance(frame[f], pd.DataFrame)]
    if repeated:
        raise ConfigurationError(
            f"more than one column is named {repeated[0]!r}; rename the columns "
            "apart before using them in a template"
        )

    columns = [frame[f].tolist() for f in fields]
    prompts: list[Prompt] = []
    for position, values in enumerate(zip(*columns, strict=True)):
        if any(is_missing(v) for v in values):
            prompts.append(None)
            continue
        cells = dict(zip(fields, values, strict=True))
        try:
            prompts.append(prompt.format_map(cells))
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(
                f"row {position} (index {frame.index[position]!r}) does not fit the "
                f"template {prompt!r}: {exc}; its values are {cells!r}. Clean the "
                "column, or drop the format spec"
            ) from exc
    return prompts


def result_names(frame: pd.DataFrame, prefix: str | None) -> dict[str, str]:
    """Result column names; refuses to overwrite a column the frame has."""
    if prefix is None:
        prefix = ""
    if not isinstance(prefix, str):
        raise ConfigurationError(f"prefix must be a string, got {prefix!r}")
    names = {column: f"{prefix}{column}" for column in RESULT_COLUMNS}
    clash = [name for name in names.values() if name in frame.columns]
    if clash:
        raise ConfigurationError(
            f"the frame already has column(s) {clash}; pass prefix='...' to name the "
            "result columns apart, e.g. prefix='v2_'"
        )
    return names


def attach_results(
    frame: pd.DataFrame,
    results: Sequence[Completion],
    stats: StatsSnapshot | None = None,
    *,
    prefix: str = "",
) -> pd.DataFrame:
    """A copy of ``frame`` with the result columns, matched by position.

    The job's totals, when given, go to ``out.attrs["deluge"]``.
    """
    names = result_names(frame, prefix)
    out = frame.copy()
    for column, name in names.items():
        values = [getattr(result, column) for result in results]
        # An array, not a Series: assignment is then by position, whatever
        # the index looks like.
        out[name] = pd.array(values, dtype=RESULT_DTYPES[column])
    if stats is not None:
        out.attrs["deluge"] = stats.summary()
    return out


class _Accessor:
    """What ``df.deluge`` and ``s.deluge`` share."""

    def __init__(self, obj: pd.DataFrame | pd.Series) -> None:
        self._obj = obj

    def _frame(self, prompt: str | None) -> tuple[pd.DataFrame, str | None]:
        raise NotImplementedError

    def complete(
        self,
        model: str | Sequence[str],
        prompt: str | None = None,
        *,
        system: str | None = None,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        temperature: float | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        max_requests_per_minute: float | None = None,
        max_tokens_per_minute: float | None = None,
        max_concurrent_requests: int | None = None,
        max_input_tokens_per_minute: float | None = None,
        max_output_tokens_per_minute: float | None = None,
        progress: Any = "auto",
        prefix: str = "",
        errors: ErrorsMode = "store",
        api_key: str | None = None,
        cache: CacheOption = True,
        max_cost: float | None = None,
        dry_run: bool = False,
    ) -> pd.DataFrame | Estimate:
        """Send one prompt per row and return the frame with result columns.

        Parameters
        ----------
        model
            A model name from the registry (see ``deluge_nb.register_model``
            for your own), or several sharing one budget.
        prompt
            A column name, or a template over columns such as
            ``"Translate {text} to {lang}"``. Defaults to a column named
            ``prompt`` (for a Series: the Series itself).
        system
            A system message sent with every row.
        max_tokens
            Output cap per row; reserved against tokens/min before sending.
        temperature
            Sampling temperature; None keeps the server's default.
        timeout
            Seconds per attempt.
        max_attempts
            Attempts per row, the first included.
        max_requests_per_minute, max_tokens_per_minute, max_concurrent_requests
            Limits. They are shared per API key and model and stay in force
            for later calls until changed; the first call on a model starts
            from its registry limits, as does the next call after
            ``register_model`` registers that name again.
        max_input_tokens_per_minute, max_output_tokens_per_minute
            For providers that limit input and output tokens apart
            (Anthropic).
        progress
            ``"auto"``, ``"tqdm"``, ``"manual"`` (a line every 30 s) or None.
        prefix
            Put before each result column's name; None or "" for none.
        errors
            ``"store"``: a failed row gets its ``error``; ``"raise"``: the
            first failure stops the job and is raised.
        api_key
            Overrides the model's environment variable.
        cache
            True (default): the shared response cache, so re-running sends
            only rows not yet answered; a path or ``ResponseCache``; False.
        max_cost
            USD this call may spend at most; checked before each request.
        dry_run
            Send nothing; return ``estimate()``'s report instead.

        Returns
        -------
        pandas.DataFrame
            The input's columns, index and order, plus ``response``,
            ``input_tokens``, ``output_tokens``, ``cost_usd`` (what this call
            paid: 0 for rows from the cache), ``model``, ``finish_reason``,
            ``latency_s``, ``attempts``, ``cached`` and ``error``. The job's
            totals are in ``out.attrs["deluge"]``.
        """
        options: dict[str, Any] = {
            "system": system,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "timeout": timeout,
            "max_attempts": max_attempts,
            "max_requests_per_minute": max_requests_per_minute,
            "max_tokens_per_minute": max_tokens_per_minute,
            "max_concurrent_requests": max_concurrent_requests,
            "max_input_tokens_per_minute": max_input_tokens_per_minute,
            "max_output_tokens_per_minute": max_output_tokens_per_minute,
            "progress": progress,
            "errors": errors,
            "api_key": api_key,
            "cache": cache,
            "max_cost": max_cost,
        }
        if dry_run:
            return self.estimate(model, prompt, **options)
        return self.submit(model, prompt, prefix=prefix, **options).result()

    async def acomplete(
        self,
        model: str | Sequence[str],
        prompt: str | None = None,
        **options: Any,
    ) -> pd.DataFrame:
        """The awaitable form of ``complete``, for top-level ``await`` in a cell.

        Takes the same options as ``complete``. While it runs, the notebook's
        own loop is free, so the panel's sliders and buttons stay live.
        """
        return await self.submit(model, prompt, **options)

    def estimate(
        self,
        model: str | Sequence[str],
        prompt: str | None = None,
        *,
        expected_output_tokens: int | None = None,
        **options: Any,
    ) -> Estimate:
        """What ``complete`` would send and cost, with no API call.

        Takes the same options as ``complete``. Output is counted at
        ``max_tokens`` per request (an upper bound) unless
        ``expected_output_tokens`` is given.

        Returns
        -------
        Estimate
            Totals (tokens, cost realtime and batch, wall time under the
            limits, rows cached, duplicate, missing or never fitting) and
            ``.rows``, a per-row frame aligned with this one by position.
        """
        options.pop("prefix", None)
        options.pop("dry_run", None)
        options["progress"] = None
        # Limits given here price the job under them; unlike complete(),
        # they do not change the shared limiter a later call would use.
        limits = {name: options.pop(name, None) for name in LIMIT_OPTIONS}
        frame, column = self._frame(prompt)
        prompts = render_prompts(frame, column)
        client = LLMClient(model, **options)
        estimate = estimate_prompts(
            client,
            prompts,
            expected_output_tokens=expected_output_tokens,
            limits=limits,
        )
        estimate.rows.index = frame.index
        return estimate

    def submit(
        self,
        model: str | Sequence[str],
        prompt: str | None = None,
        *,
        prefix: str = "",
        **options: Any,
    ) -> Job[pd.DataFrame]:
        """Start the job and return at once; the cell finishes, the job runs.

        Takes the same options as ``complete``. In a notebook the live panel
        shows below the cell, and its sliders and buttons work on every
        ipykernel because the cell is no longer running.

        Returns
        -------
        Job
            ``job.result()`` or ``await job`` gives the frame;
            ``job.cancel()`` stops it and keeps finished rows; ``job.stats``,
            ``job.pause()``, ``job.resume()``, ``job.done``.
        """
        frame, column = self._frame(prompt)
        result_names(frame, prefix)  # refuse before spending, not after
        prompts = render_prompts(frame, column)
        client = LLMClient(model, **options)
        return client.submit(
            prompts, finalize=partial(attach_results, frame, prefix=prefix)
        )


@pd.api.extensions.register_dataframe_accessor("deluge")
class DataFrameAccessor(_Accessor):
    """``df.deluge``: send a column or a template over columns to an LLM."""

    _obj: pd.DataFrame

    def _frame(self, prompt: str | None) -> tuple[pd.DataFrame, str | None]:
        return self._obj, prompt


@pd.api.extensions.register_series_accessor("deluge")
class SeriesAccessor(_Accessor):
    """``s.deluge``: each value is a prompt, or fills ``prompt``'s template.

    The result is a DataFrame: the Series as a column (named after it, or
    ``prompt``) plus the result columns.
    """

    _obj: pd.Series

    def _frame(self, prompt: str | None) -> tuple[pd.DataFrame, str | None]:
        name = self._obj.name if self._obj.name is not None else "prompt"
        frame = self._obj.to_frame(name=name)
        if prompt is None:
            return frame, name
        return frame, prompt
