"""``LLMClient``: one model, or several sharing one budget.

The client holds what every job of its shares: the models, the sampling
options, the retry policy and the limiter for its API key. The work itself
happens in a ``Job`` (see ``_job.py``).
"""

from __future__ import annotations

import logging
import math
import numbers
import os
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, TypeVar

import pandas as pd

from . import _runner
from ._budget import Budget
from ._cache import ResponseCache, resolve_cache
from ._errors import ConfigurationError
from ._job import Job
from ._limits import Limiter, get_limiter, limiter_key
from ._models import ModelInfo, get_model
from ._progress import check_progress
from ._stats import StatsSnapshot
from ._types import Completion

logger = logging.getLogger(__name__)

CacheOption = bool | str | os.PathLike[str] | ResponseCache | None

T = TypeVar("T")

DEFAULT_MAX_TOKENS = 1024
DEFAULT_TIMEOUT_S = 120.0
DEFAULT_MAX_ATTEMPTS = 5

Prompt = str | Sequence[Mapping[str, Any]] | None
ErrorsMode = Literal["store", "raise"]


class LLMClient:
    """Send many prompts through one rate-limited budget.

    Parameters
    ----------
    model_or_models
        A registry name, or several names that share one budget; rows go to
        them in turn.
    max_requests_per_minute, max_tokens_per_minute, max_concurrent_requests
        Limits; by default the first model's registry limits and
        ``DEFAULT_MAX_CONCURRENT``. Two clients on the same API key and
        models share one limiter, so two cells never double the rate. A
        limit given here is a ceiling; the server's rate-limit headers can
        lower it but not raise it. Registry defaults yield to the headers.
    max_input_tokens_per_minute, max_output_tokens_per_minute
        For providers that limit input and output tokens apart.
    max_tokens
        Output cap per request; the limiter reserves it before sending.
    temperature
        Sampling temperature; None leaves the server's default.
    system
        A system message put before every text prompt.
    timeout
        Seconds for one attempt, after which it is retried.
    max_attempts
        Attempts per row, the first included.
    progress
        ``"auto"``, ``"tqdm"``, ``"manual"`` or None.
    api_key
        The key; by default read from the model's environment variable. It
        is never shown in a repr, a log record or an error.
    errors
        ``"store"`` (failures go to the row's ``error``) or ``"raise"``
        (the first failure stops the job and is raised).
    cache
        True (the default): the shared SQLite cache in the user's cache
        directory (``DELUGE_NB_CACHE_DIR`` moves it; ``DELUGE_NB_CACHE=off``
        turns the default off); a path; a ``ResponseCache``; or False. A
        request answered from the cache spends no budget and is marked
        ``cached``.
    max_cost
        USD this client's job may spend at most; each request reserves its
        worst case before it is sent, and sending stops before the budget
        could be exceeded.
    """

    def __init__(
        self,
        model_or_models: str | Sequence[str],
        *,
        max_requests_per_minute: float | None = None,
        max_tokens_per_minute: float | None = None,
        max_concurrent_requests: int | None = None,
        max_input_tokens_per_minute: float | None = None,
        max_output_tokens_per_minute: float | None = None,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        temperature: float | None = None,
        system: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        progress: Any = "auto",
        api_key: str | None = None,
        errors: ErrorsMode = "store",
        cache: CacheOption = True,
        max_cost: float | None = None,
    ) -> None:
        if model_or_models is None:
            names = []
        elif isinstance(model_or_models, str):
            names = [model_or_models]
        else:
            names = list(model_or_models)
        if not names or not all(isinstance(n, str) for n in names):
            raise ConfigurationError(
                f"model must be a model name or a list of them, got {model_or_models!r}"
            )
        _check_count("max_tokens", max_tokens)
        _check_count("max_attempts", max_attempts)
        if max_concurrent_requests is not None:
            _check_count("max_concurrent_requests", max_concurrent_requests)
        limits = {
            "max_requests_per_minute": max_requests_per_minute,
            "max_tokens_per_minute": max_tokens_per_minute,
            "max_input_tokens_per_minute": max_input_tokens_per_minute,
            "max_output_tokens_per_minute": max_output_tokens_per_minute,
        }
        for name, value in limits.items():
            if value is not None and not (_is_number(value) and value > 0):
                raise ConfigurationError(
                    f"{name} must be a number above 0 (or None to keep the limit "
                    f"in force), got {value!r}"
                )
        if not (_is_number(timeout) and timeout > 0):
            raise ConfigurationError(
                f"timeout must be seconds above 0, got {timeout!r}"
            )
        if max_cost is not None and not (_is_number(max_cost) and max_cost >= 0):
            raise ConfigurationError(
                f"max_cost must be a number of USD, 0 or more, got {max_cost!r}"
            )
        if errors not in ("store", "raise"):
            raise ConfigurationError(
                f"errors must be 'store' or 'raise', got {errors!r}"
            )
        if temperature is not None and not (
            _is_number(temperature) and math.isfinite(temperature) and temperature >= 0
        ):
            raise ConfigurationError(
                f"temperature must be a number, 0 or more (or None for the "
                f"server's default), got {temperature!r}"
            )
        if api_key is not None and not isinstance(api_key, str):
            # Not shown: a wrong value may still be a secret.
            raise ConfigurationError(
                f"api_key must be a string, got a {type(api_key).__name__}"
            )
        check_progress(progress)

        self.models = [get_model(name) for name in names]
        self.max_tokens = int(max_tokens)
        self.temperature = temperature
        self.system = system
        self.timeout = float(timeout)
        self.max_attempts = int(max_attempts)
        self.progress = progress
        self.errors: ErrorsMode = errors
        self._api_key = api_key
        self._rng = random.Random()
        self.cache = resolve_cache(_default_cache_setting(cache))
        self.max_cost = max_cost
        Budget(max_cost)  # validates

        first = self.models[0]
        self.limiter: Limiter = get_limiter(
            limiter_key(first.base_url, self._key_for(first), "+".join(names)),
            defaults=first.default_limits(),
            given={
                "requests": _given(max_requests_per_minute)
                or _registered(first, "max_requests_per_minute"),
                "tokens": _given(max_tokens_per_minute)
                or _registered(first, "max_tokens_per_minute"),
                "input_tokens": max_input_tokens_per_minute,
                "output_tokens": max_output_tokens_per_minute,
            },
            max_concurrent_requests=max_concurrent_requests,
        )
        self._last_job: Job[Any] | None = None

    def __repr__(self) -> str:
        names = ", ".join(m.name for m in self.models)
        lim = self.limiter
        return (
            f"LLMClient([{names}], max_requests_per_minute="
            f"{lim.requests.per_minute:g}, max_tokens_per_minute="
            f"{lim.tokens.per_minute:g}, max_concurrent_requests="
            f"{lim.max_concurrent_requests})"
        )

    # -- public ----------------------------------------------------------

    def process_prompts_sync(
        self, prompts: Sequence[Prompt], show_progress: bool = True
    ) -> list[Completion]:
        """Send every prompt and wait; one ``Completion`` per prompt, in order.

        Works in scripts and inside a running notebook loop alike. An
        interrupt (Ctrl-C, the kernel's stop button) stops the job within
        about a second and returns what finished; the other rows carry a
        "cancelled" error.
        """
        if _runner.in_engine_thread():
            raise RuntimeError(
                "a blocking deluge_nb call was made from inside a running job; "
                "use process_prompts_async there"
            )
        job: Job[list[Completion]] = self.submit(prompts, show_progress=show_progress)
        return job.result()

    async def process_prompts_async(
        self, prompts: Sequence[Prompt], show_progress: bool = True
    ) -> list[Completion]:
        """The awaitable form of ``process_prompts_sync``."""
        job: Job[list[Completion]] = self.submit(prompts, show_progress=show_progress)
        return await job

    def submit(
        self,
        prompts: Sequence[Prompt],
        *,
        show_progress: bool = True,
        finalize: Callable[[list[Completion], StatsSnapshot], T] | None = None,
    ) -> Job[Any]:
        """Start a job and return its handle at once."""
        prompts = _checked_prompts(prompts)
        job: Job[Any] = Job(
            self, prompts, finalize=finalize, show_progress=show_progress
        )
        self._last_job = job
        return job.start()

    @property
    def stats(self) -> StatsSnapshot | None:
        """The latest job's counters, readable while it runs."""
        return None if self._last_job is None else self._last_job.stats

    def request_params(self) -> dict[str, Any]:
        """Sampling parameters sent with every request (None: left out)."""
        return {"max_tokens": self.max_tokens, "temperature": self.temperature}

    # -- helpers used by the job -----------------------------------------

    def _key_for(self, model: ModelInfo) -> str | None:
        if self._api_key is not None:
            return self._api_key
        if model.api_key_env is None:
            return None
        return os.environ.get(model.api_key_env) or None

    def _check_keys(self) -> None:
        """Refuse to send without a key a model needs.

        Checked when a job has requests to send, not before: an estimate
        or a rerun the cache answers whole needs no key.
        """
        for model in self.models:
            if model.api_key_env is not None and self._key_for(model) is None:
                raise ConfigurationError(
                    f"model {model.name!r} needs an API key: set "
                    f"{model.api_key_env} or pass api_key=. To try deluge_nb "
                    "without one, use the simulator (deluge_nb.sim.serve) or a "
                    "local model (deluge_nb.local)."
                )

    def _messages(
        self, prompt: str | Sequence[Mapping[str, Any]]
    ) -> list[dict[str, Any]]:
        if isinstance(prompt, str):
            messages = [{"role": "user", "content": prompt}]
            if self.system:
                messages.insert(0, {"role": "system", "content": self.system})
            return messages
        return [dict(m) for m in prompt]


def _default_cache_setting(cache: CacheOption) -> CacheOption:
    """``DELUGE_NB_CACHE=off`` turns the default cache off (tests, CI)."""
    if cache is True and os.environ.get("DELUGE_NB_CACHE", "").lower() in (
        "0",
        "off",
        "false",
        "no",
    ):
        return False
    return cache


def _registered(model: ModelInfo, field: str) -> float | None:
    """A limit the model was registered with, when its owner chose it."""
    return getattr(model, field) if model.limits_given else None


def is_missing(value: Any) -> bool:
    """None, NaN, NaT or pd.NA: a cell with no prompt."""
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    if not pd.api.types.is_scalar(value):
        return False  # a list holding NaN is a value, not a missing cell
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # arrays and other containers
        return False


def _is_number(value: Any) -> bool:
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and not math.isnan(value)
    )


def _check_count(name: str, value: Any) -> None:
    if not (isinstance(value, numbers.Integral) and not isinstance(value, bool)):
        raise ConfigurationError(f"{name} must be a whole number, got {value!r}")
    if value < 1:
        raise ConfigurationError(f"{name} must be 1 or more, got {value!r}")


def _given(limit: float | None) -> float | None:
    return None if limit is None else float(limit)


def _checked_prompts(prompts: Sequence[Prompt]) -> list[Prompt]:
    """The prompts, with NaN and pd.NA as None.

    Refuses what would be sent wrongly: a bare string, non-text items.
    """
    if isinstance(prompts, str | bytes) or not isinstance(prompts, Sequence):
        raise TypeError(
            "prompts must be a list of prompts (strings, lists of chat messages, "
            f"or None), not {type(prompts).__name__}; for one prompt pass [prompt]"
        )
    checked: list[Prompt] = []
    for position, prompt in enumerate(prompts):
        if isinstance(prompt, str):
            checked.append(prompt)
            continue
        if (
            isinstance(prompt, Sequence)
            and prompt
            and all(isinstance(m, Mapping) for m in prompt)
        ):
            checked.append(prompt)
            continue
        if is_missing(prompt):
            checked.append(None)
            continue
        raise TypeError(
            f"prompt at position {position} is a {type(prompt).__name__}; a prompt "
            "is a string, a list of chat messages ({'role': ..., 'content': ...}) "
            "or None"
        )
    return checked
