"""The model registry: where a model lives, what it costs, what limits it has.

Known models come from ``models.json`` beside this file; prices there are in
USD per million tokens, the unit providers publish. ``register_model`` adds
a model of the user's own, for example a local OpenAI-compatible server.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
import threading
from dataclasses import dataclass, replace
from importlib import resources
from urllib.parse import urlsplit

import tiktoken

from ._errors import ConfigurationError, ImplausiblePriceError, UnknownModelError
from ._limits import forget_limiters
from ._types import Usage

PROVIDERS = ("openai", "openai-compatible", "anthropic")

DEFAULT_BASE_URLS = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com/v1",
}
DEFAULT_KEY_ENVS = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}
# The variables the official SDKs read to send a provider's requests elsewhere
# (a proxy, a gateway), with the path they leave out: OPENAI_BASE_URL ends in
# /v1 already, ANTHROPIC_BASE_URL is the host alone.
BASE_URL_ENVS = {
    "openai": ("OPENAI_BASE_URL", ""),
    "anthropic": ("ANTHROPIC_BASE_URL", "/v1"),
}

# Published prices run from a few thousandths of a dollar (cached input of
# the smallest models) to a few hundred dollars per million tokens. A price
# outside this band was almost surely given per token or per thousand.
MIN_PLAUSIBLE_PRICE = 0.001
MAX_PLAUSIBLE_PRICE = 1000.0

# Limits for a registered model with none of its own: generous enough for a
# local server, low enough not to flood one.
FALLBACK_REQUESTS_PER_MINUTE = 600
FALLBACK_TOKENS_PER_MINUTE = 1_000_000

_DATED_SUFFIX = re.compile(r"-\d{4}-\d{2}-\d{2}$")


@dataclass(frozen=True)
class ModelInfo:
    """Everything deluge_nb knows about one model.

    Prices are USD per million tokens. ``cached_input_price`` None means
    cached input is billed at the input price.
    """

    name: str
    provider: str
    api_model: str
    base_url: str
    api_key_env: str | None
    input_price: float
    output_price: float
    cached_input_price: float | None = None
    cache_write_price: float | None = None
    context_window: int | None = None
    max_requests_per_minute: float = FALLBACK_REQUESTS_PER_MINUTE
    max_tokens_per_minute: float = FALLBACK_TOKENS_PER_MINUTE
    tokenizer: str | None = None
    max_input_tokens_per_minute: float = math.inf
    max_output_tokens_per_minute: float = math.inf
    # True when whoever registered the model chose its limits: they are then
    # ceilings, as if given to each call, not guesses the server corrects.
    limits_given: bool = False

    def default_limits(self) -> dict[str, float]:
        """Per-minute limits by limiter dimension."""
        return {
            "requests": self.max_requests_per_minute,
            "tokens": self.max_tokens_per_minute,
            "input_tokens": self.max_input_tokens_per_minute,
            "output_tokens": self.max_output_tokens_per_minute,
        }

    def cost_usd(self, usage: Usage) -> float:
        """The cost of ``usage`` in USD.

        ``usage.input_tokens`` counts every prompt token. Cached reads are
        billed at the cached price and cache writes at the write price,
        never again at the input price; reasoning tokens are already part
        of the output.
        """
        cached = min(usage.cached_input_tokens, usage.input_tokens)
        written = min(usage.cache_write_tokens, usage.input_tokens - cached)
        cached_price = (
            self.input_price
            if self.cached_input_price is None
            else self.cached_input_price
        )
        write_price = (
            self.input_price
            if self.cache_write_price is None
            else self.cache_write_price
        )
        per_million = (
            (usage.input_tokens - cached - written) * self.input_price
            + cached * cached_price
            + written * write_price
            + usage.output_tokens * self.output_price
        )
        return per_million / 1_000_000


def check_price(name: str, value: float | None) -> None:
    """Reject a price that cannot be USD per million tokens.

    Raises
    ------
    ImplausiblePriceError
        For a negative price, or a non-zero price outside
        ``[MIN_PLAUSIBLE_PRICE, MAX_PLAUSIBLE_PRICE]``.
    """
    if value is None or value == 0:
        return
    if value < 0 or not MIN_PLAUSIBLE_PRICE <= value <= MAX_PLAUSIBLE_PRICE:
        raise ImplausiblePriceError(
            f"{name}={value!r} does not look like USD per million tokens "
            f"(expected 0, or between {MIN_PLAUSIBLE_PRICE} and "
            f"{MAX_PLAUSIBLE_PRICE:g}). A price of $0.15 per million tokens is "
            "written 0.15, not 0.00000015 (per token) or 0.00015 (per thousand)."
        )


_lock = threading.Lock()
_registry: dict[str, ModelInfo] = {}


def _load_builtin() -> None:
    text = resources.files("deluge_nb").joinpath("models.json").read_text("utf-8")
    for name, entry in json.loads(text)["models"].items():
        provider = entry["provider"]
        info = ModelInfo(
            name=name,
            provider=provider,
            api_model=entry.get("api_model", name),
            base_url=DEFAULT_BASE_URLS[provider],
            api_key_env=DEFAULT_KEY_ENVS.get(provider),
            input_price=entry["input"],
            output_price=entry["output"],
            cached_input_price=entry.get("cached_input"),
            cache_write_price=entry.get("cache_write"),
            context_window=entry.get("context_window"),
            max_requests_per_minute=entry["rpm"],
            max_tokens_per_minute=entry["tpm"],
            tokenizer=entry.get("tokenizer"),
            max_input_tokens_per_minute=entry.get("itpm") or math.inf,
            max_output_tokens_per_minute=entry.get("otpm") or math.inf,
        )
        _validate(info)
        _registry[name] = info


def _validate(info: ModelInfo) -> None:
    if info.provider not in PROVIDERS:
        raise ConfigurationError(
            f"model {info.name!r}: provider {info.provider!r} is not one of "
            f"{', '.join(PROVIDERS)}"
        )
    for field in ("input_price", "output_price", "cached_input_price"):
        check_price(field, getattr(info, field))
    check_price("cache_write_price", info.cache_write_price)
    if info.context_window is not None and info.context_window <= 0:
        raise ConfigurationError(f"model {info.name!r}: context_window must be > 0")


def get_model(name: str) -> ModelInfo:
    """Look up a model by name; dated snapshots fall back to their family.

    Raises
    ------
    UnknownModelError
        With the closest known names, and how to register a new one.
    """
    with _lock:
        if not _registry:
            _load_builtin()
        info = _registry.get(name)
        if info is None:
            family = _registry.get(_DATED_SUFFIX.sub("", name))
            if family is not None:
                info = replace(family, name=name, api_model=name)
            else:
                close = difflib.get_close_matches(name, list(_registry), n=3)
    if info is not None:
        return _with_base_url_from_env(info)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    raise UnknownModelError(
        f"unknown model {name!r}.{hint} For a model of your own (any "
        "OpenAI-compatible server), call deluge_nb.register_model(name, "
        "base_url=..., input_price=..., output_price=...)."
    )


def _with_base_url_from_env(info: ModelInfo) -> ModelInfo:
    """``info`` sent where ``OPENAI_BASE_URL``/``ANTHROPIC_BASE_URL`` say.

    Only a model still on its provider's default endpoint moves; one
    registered with a ``base_url`` of its own keeps it.
    """
    if info.provider not in BASE_URL_ENVS:
        return info
    if info.base_url != DEFAULT_BASE_URLS[info.provider]:
        return info
    variable, path = BASE_URL_ENVS[info.provider]
    url = os.environ.get(variable, "").strip().rstrip("/")
    if not url:
        return info
    if urlsplit(url).scheme not in ("http", "https"):
        raise ConfigurationError(
            f"{variable} must start with http:// or https://, got {url!r}"
        )
    if path and not url.endswith(path):
        url += path
    return replace(info, base_url=url)


def register_model(
    name: str,
    *,
    base_url: str | None = None,
    provider: str | None = None,
    api_model: str | None = None,
    api_key_env: str | None = None,
    input_price: float = 0.0,
    output_price: float = 0.0,
    cached_input_price: float | None = None,
    context_window: int | None = None,
    max_requests_per_minute: float | None = None,
    max_tokens_per_minute: float | None = None,
    tokenizer: str | None = None,
) -> ModelInfo:
    """Add or replace a model in the registry.

    Parameters
    ----------
    name
        The name to pass as ``model`` to ``complete`` or ``LLMClient``.
    base_url
        The API root, e.g. ``"http://127.0.0.1:8080/v1"``. A model with a
        base URL of its own is an OpenAI-compatible endpoint.
    provider
        ``"openai"`` or ``"openai-compatible"``; inferred from ``base_url``.
    api_model
        The name sent on the wire; defaults to ``name``.
    api_key_env
        The environment variable holding the key; None sends no key.
    input_price, output_price, cached_input_price
        USD per million tokens; zero by default.
    context_window
        Prompt plus output tokens the model accepts; None if unknown.
    max_requests_per_minute, max_tokens_per_minute
        Limits for this model when a call gives none; ceilings that the
        server's rate-limit headers can lower but not raise. Without them
        the model starts at 600 requests/min and 1,000,000 tokens/min and
        takes the server's limits from its headers.
    tokenizer
        A tiktoken encoding name, or None for a labelled estimate.

    Returns
    -------
    ModelInfo
        The entry now in the registry.
    """
    if provider is None:
        if not base_url:
            raise ConfigurationError(
                f"register_model({name!r}) needs base_url=... for your own server "
                "(any OpenAI-compatible endpoint), or provider='openai' or "
                "'anthropic' with its prices for a hosted model the registry lacks"
            )
        provider = "openai-compatible"
    info = ModelInfo(
        name=name,
        provider=provider,
        api_model=api_model or name,
        base_url=(base_url or DEFAULT_BASE_URLS.get(provider, "")).rstrip("/"),
        api_key_env=api_key_env
        or (None if base_url else DEFAULT_KEY_ENVS.get(provider)),
        input_price=input_price,
        output_price=output_price,
        cached_input_price=cached_input_price,
        context_window=context_window,
        max_requests_per_minute=max_requests_per_minute or FALLBACK_REQUESTS_PER_MINUTE,
        max_tokens_per_minute=max_tokens_per_minute or FALLBACK_TOKENS_PER_MINUTE,
        tokenizer=tokenizer,
        limits_given=bool(max_requests_per_minute or max_tokens_per_minute),
    )
    if not info.base_url:
        raise ConfigurationError(f"model {name!r}: base_url is required")
    if urlsplit(info.base_url).scheme not in ("http", "https"):
        raise ConfigurationError(
            f"model {name!r}: base_url must start with http:// or https://, got "
            f"{info.base_url!r}"
        )
    if tokenizer is not None and tokenizer not in tiktoken.list_encoding_names():
        raise ConfigurationError(
            f"model {name!r}: tokenizer {tokenizer!r} is not a tiktoken encoding; "
            f"use one of {tiktoken.list_encoding_names()}, or None for an estimate"
        )
    _validate(info)
    with _lock:
        if not _registry:
            _load_builtin()
        _registry[name] = info
    # Limits an earlier call set for this name end with the old entry.
    forget_limiters(name)
    return info


def known_models() -> list[str]:
    """Names in the registry, sorted."""
    with _lock:
        if not _registry:
            _load_builtin()
        return sorted(_registry)
