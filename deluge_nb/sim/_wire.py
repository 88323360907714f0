"""What a wire format must provide to the shared request handler.

The handler in `deluge_nb.sim._app` runs the same steps for every format:
read the body, parse it, apply directives, check the context window,
inject a fault or take the rate limits, generate the reply, sleep the
latency, refund what was not used. A `WireFormat` supplies the parts that
differ: the request's shape, the error body, which buckets count what, the
reply's shape and the rate-limit headers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from deluge_nb.sim._config import SimConfig
from deluge_nb.sim._reply import Finish
from deluge_nb.sim._state import SimState


class Reject(Exception):
    """Raised inside the handler to answer with a ready error response."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


@dataclass(frozen=True)
class ChatRequest:
    """A valid chat request, whatever its wire format.

    Attributes
    ----------
    model : str
        The model asked for; echoed in the reply.
    messages : sequence of mapping
        The conversation; directives are read from its last user message.
    counted : sequence of mapping
        The messages whose tokens make the prompt (a top-level system
        prompt included), for `deluge_nb._tokens.count_message_tokens`.
    max_tokens : int
        The output cap.
    content_key : tuple
        Everything the generated words depend on, the seed included.
    """

    model: str
    messages: Sequence[Mapping[str, Any]]
    counted: Sequence[Mapping[str, Any]]
    max_tokens: int
    content_key: tuple[Any, ...]


class WireFormat(Protocol):
    """One provider's protocol, as the simulator speaks it."""

    name: str
    """Key of this format in ``stats()["by_format"]``."""

    def parse(self, body: Any, config: SimConfig) -> ChatRequest:
        """Validate a decoded JSON body; raise `Reject` with a 400 if invalid."""
        ...

    def error(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> web.Response:
        """An error response in this format's shape."""
        ...

    def context_error(
        self, input_tokens: int, max_tokens: int, window: int
    ) -> web.Response:
        """The 400 for a prompt plus ``max_tokens`` above the context window."""
        ...

    def admit(self, state: SimState, input_tokens: int, max_tokens: int) -> None:
        """Take the request's cost from the buckets, or raise `Reject` (429)."""
        ...

    def settle(self, state: SimState, max_tokens: int, output_tokens: int) -> None:
        """Refund what an admitted request reserved but did not use."""
        ...

    def reply(
        self,
        chat: ChatRequest,
        text: str,
        input_tokens: int,
        output_tokens: int,
        finish: Finish,
    ) -> dict[str, Any]:
        """The JSON body of a successful reply."""
        ...

    def limit_headers(self, state: SimState) -> dict[str, str]:
        """The rate-limit headers describing the buckets now."""
        ...
