"""Wire protocols: one module per API family.

A provider builds the HTTP request for a chat, parses a successful body
into text, finish reason and usage, and turns an error body into a message.
It does no I/O of its own; the client sends what it builds.
"""

from __future__ import annotations

from ._anthropic import AnthropicMessages
from ._base import ParsedResponse, Provider, RequestSpec
from ._openai import OpenAIChat

_PROVIDERS: dict[str, Provider] = {
    "anthropic": AnthropicMessages(),
    "openai": OpenAIChat(),
    "openai-compatible": OpenAIChat(),
}


def get_provider(name: str) -> Provider:
    """The provider for a registry ``provider`` field."""
    return _PROVIDERS[name]


__all__ = [
    "AnthropicMessages",
    "OpenAIChat",
    "ParsedResponse",
    "Provider",
    "RequestSpec",
    "get_provider",
]
