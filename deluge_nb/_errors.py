"""The exception tree of deluge_nb.

::

    DelugeError
    +-- ConfigurationError (ValueError)      bad argument, bad registry entry
    |   +-- UnknownModelError (KeyError)     a model name the registry lacks
    |   +-- ImplausiblePriceError            a price that is not per million
    +-- RequestError                         one request failed; names its row
        +-- RequestTooLargeError             can never fit a limit or window
        +-- APIStatusError                   the server answered an error
        |   +-- RateLimitError               429
        |   +-- ServerError                  5xx and 529
        +-- APIConnectionError               no answer: reset, refused
            +-- APITimeoutError              no answer in time

Rows that fail get the error's text in their ``error`` column; the job goes
on. ``errors="raise"`` raises the first one instead.
"""

from __future__ import annotations

from typing import TypedDict


class ErrorContext(TypedDict):
    """Where a request failed: the keywords every ``RequestError`` takes."""

    row: int | None
    model: str | None
    attempt: int | None


class DelugeError(Exception):
    """Base class of every error deluge_nb raises."""


class ConfigurationError(DelugeError, ValueError):
    """An argument or registry entry is invalid."""


class UnknownModelError(ConfigurationError, KeyError):
    """The model name is not in the registry."""

    def __str__(self) -> str:  # KeyError quotes its message otherwise
        return str(self.args[0]) if self.args else ""


class ImplausiblePriceError(ConfigurationError):
    """A price does not look like USD per million tokens."""


class RequestError(DelugeError):
    """One request failed.

    Attributes
    ----------
    row
        Position of the row in the job, when known.
    model
        The model the request was for.
    attempt
        The attempt (1-based) that failed.
    retryable
        Whether another attempt may succeed.
    retry_after
        Seconds the server asked to wait, if it did.
    """

    retryable: bool = False
    retry_after: float | None = None

    def __init__(
        self,
        message: str,
        *,
        row: int | None = None,
        model: str | None = None,
        attempt: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.row = row
        self.model = model
        self.attempt = attempt

    def __str__(self) -> str:
        where = [
            f"{name} {value}"
            for name, value in (
                ("row", self.row),
                ("model", self.model),
                ("attempt", self.attempt),
            )
            if value is not None
        ]
        return f"{self.message} ({', '.join(where)})" if where else self.message


class RequestTooLargeError(RequestError):
    """The request can never fit the model's context window or a limit."""


class APIStatusError(RequestError):
    """The server answered with an error status."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        row: int | None = None,
        model: str | None = None,
        attempt: int | None = None,
    ) -> None:
        super().__init__(message, row=row, model=model, attempt=attempt)
        self.status = status


class RateLimitError(APIStatusError):
    """HTTP 429. ``dimension`` names the limit hit, when the body says."""

    dimension: str | None = None


class ServerError(APIStatusError):
    """HTTP 5xx or 529 (overloaded)."""


class APIConnectionError(RequestError):
    """The connection failed before an answer arrived."""


class APITimeoutError(APIConnectionError):
    """No answer arrived within the timeout."""
