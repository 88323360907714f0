"""deluge_nb: a DataFrame column of prompts through LLM APIs, at the rate limit.

``import deluge_nb`` registers the ``.deluge`` accessor on pandas DataFrames
and Series::

    out = df.deluge.complete("gpt-4o-mini", prompt="Sentiment of: {review}")
"""

from __future__ import annotations

from . import _frame  # noqa: F401  (registers the pandas accessors)
from ._cache import ResponseCache
from ._client import LLMClient
from ._errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    ConfigurationError,
    DelugeError,
    ImplausiblePriceError,
    RateLimitError,
    RequestError,
    RequestTooLargeError,
    ServerError,
    UnknownModelError,
)
from ._limits import Limiter
from ._models import ModelInfo, get_model, known_models, register_model
from ._stats import StatsSnapshot
from ._types import Completion, Usage

__version__ = "0.1.0"

__all__ = [
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "Completion",
    "ConfigurationError",
    "DelugeError",
    "ImplausiblePriceError",
    "LLMClient",
    "Limiter",
    "ModelInfo",
    "RateLimitError",
    "RequestError",
    "RequestTooLargeError",
    "ResponseCache",
    "ServerError",
    "StatsSnapshot",
    "UnknownModelError",
    "Usage",
    "__version__",
    "get_model",
    "known_models",
    "register_model",
]
