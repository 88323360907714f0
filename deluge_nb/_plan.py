"""From prompts to the requests a job will send: dedupe, estimates, keys.

Both a job and ``estimate()`` start here, so what ``estimate()`` reports is
what the job does. Identical requests (same model, same messages, same
parameters) are planned once with every row position they serve, so a
million rows of ten distinct prompts cost ten requests and ten small
objects, not a million.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._cache import request_key
from ._models import ModelInfo
from ._tokens import count_message_tokens

if TYPE_CHECKING:
    from ._client import LLMClient, Prompt


@dataclass
class PlannedRequest:
    """One distinct request and the rows it answers."""

    positions: list[int]
    model: ModelInfo
    messages: list[dict[str, Any]]
    input_estimate: int
    key: str
    problem: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def first(self) -> int:
        return self.positions[0]


@dataclass
class Plan:
    """What a job will do with its prompts."""

    total: int
    missing: list[int]
    requests: list[PlannedRequest]


def plan_requests(client: LLMClient, prompts: Sequence[Prompt]) -> Plan:
    """Group prompts into distinct requests, in order of first appearance.

    Models take turns over distinct requests, so duplicates always share
    one model and one request.
    """
    missing: list[int] = []
    by_prompt: dict[str, PlannedRequest] = {}
    requests: list[PlannedRequest] = []
    params = client.request_params()
    for position, prompt in enumerate(prompts):
        if prompt is None:
            missing.append(position)
            continue
        text_key = prompt if isinstance(prompt, str) else _messages_key(prompt)
        planned = by_prompt.get(text_key)
        if planned is not None:
            planned.positions.append(position)
            continue

        model = client.models[len(requests) % len(client.models)]
        messages = client._messages(prompt)
        estimate = count_message_tokens(messages, model.tokenizer)
        key = request_key(
            provider=model.provider,
            base_url=model.base_url,
            model=model.api_model,
            messages=messages,
            params=params,
        )
        planned = PlannedRequest([position], model, messages, estimate, key)
        planned.problem = _never_fits(client, planned)
        by_prompt[text_key] = planned
        requests.append(planned)
    return Plan(len(prompts), missing, requests)


def _never_fits(client: LLMClient, planned: PlannedRequest) -> str | None:
    reserve = planned.input_estimate + client.max_tokens
    window = planned.model.context_window
    if window is not None and reserve > window:
        return (
            f"prompt of about {planned.input_estimate} tokens plus max_tokens="
            f"{client.max_tokens} exceeds the context window of "
            f"{planned.model.name} ({window} tokens)"
        )
    return client.limiter.check_fits(
        reserve,
        input_tokens=planned.input_estimate,
        output_tokens=client.max_tokens,
    )


def _messages_key(messages: Sequence[Mapping[str, Any]]) -> str:
    return "\0messages\0" + json.dumps(
        [dict(m) for m in messages], sort_keys=True, ensure_ascii=False, default=str
    )
