"""The ``[[sim:NAME=VALUE]]`` directives that steer single requests.

They are read from the text of the *last user message* only; the package
docstring (`deluge_nb.sim`) lists them. Parsing is the same for every wire
format; a bad directive raises `DirectiveError`, which the app answers with
a 400 in the request's own format.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from deluge_nb.sim._bucket import format_go_duration

_DIRECTIVE = re.compile(r"\[\[sim:([A-Za-z_]+)(?:=([^\]]*))?\]\]")
_KNOWN = frozenset({"sleep", "status", "retry_after", "hang", "echo"})


class DirectiveError(ValueError):
    """A directive that is unknown or has a bad value."""


@dataclass(frozen=True)
class ForcedStatus:
    """The error a ``[[sim:status=CODE]]`` directive asks for."""

    status: int
    message: str
    code: str
    headers: Mapping[str, str] = field(default_factory=dict)


def content_text(content: Any) -> str:
    """The text of a message's content: a string, or a list of text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [
            part.get("text", "")
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        ]
        return "\n".join(parts)
    return ""


def find_directives(
    messages: Sequence[Mapping[str, Any]],
) -> tuple[dict[str, str], str]:
    """Directives of the last user message, and its text without them.

    Parameters
    ----------
    messages : sequence of mapping
        Chat messages with ``role`` and ``content``.

    Returns
    -------
    directives : dict of str to str
        Name to value (``""`` for a bare ``[[sim:NAME]]``).
    text : str
        The last user message with the directives removed, stripped.

    Raises
    ------
    DirectiveError
        For an unknown directive name.
    """
    last = next(
        (m for m in reversed(messages) if m.get("role") == "user"), {"content": ""}
    )
    text = content_text(last.get("content"))
    found: dict[str, str] = {}
    for match in _DIRECTIVE.finditer(text):
        name, value = match.group(1).lower(), match.group(2)
        if name not in _KNOWN:
            raise DirectiveError(f"unknown directive [[sim:{name}]]")
        found[name] = "" if value is None else value.strip()
    return found, _DIRECTIVE.sub("", text).strip()


def seconds_directive(directives: Mapping[str, str], name: str) -> float | None:
    """The value of directive `name` as a finite number of seconds >= 0.

    Returns None when the directive is absent; raises `DirectiveError` when
    its value is not such a number.
    """
    if name not in directives:
        return None
    value = directives[name]
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not number >= 0 or math.isinf(number):
        raise DirectiveError(f"{name}={value!r} is not a number of seconds")
    return number


def forced_status(directives: Mapping[str, str]) -> ForcedStatus | None:
    """The error asked for by ``[[sim:status=CODE]]``, or None without one.

    A 429 carries ``retry-after`` and ``retry-after-ms`` from
    ``[[sim:retry_after=SECONDS]]`` (default 1; ``none`` sends neither).
    """
    if "status" not in directives:
        return None
    value = directives["status"]
    try:
        status = int(value)
    except ValueError:
        status = 0
    if not 400 <= status <= 599:
        raise DirectiveError(f"status={value!r} is not an HTTP error status")

    headers: dict[str, str] = {}
    if status == 429:
        message = "Rate limit reached (simulated by a [[sim:status=429]] directive)."
        if directives.get("retry_after", "").lower() != "none":
            retry = seconds_directive(directives, "retry_after")
            retry = 1.0 if retry is None else retry
            headers["retry-after"] = str(math.ceil(retry))
            headers["retry-after-ms"] = str(round(retry * 1000))
            message += f" Please try again in {format_go_duration(retry)}."
        return ForcedStatus(status, message, "rate_limit_exceeded", headers)
    if status >= 500:
        message = f"The server had an error (simulated status {status})."
    else:
        message = f"Simulated error with status {status}."
    return ForcedStatus(status, message, "simulated_error", headers)
