"""``max_cost``: spending stops before the budget can be exceeded.

Each request reserves its worst-case cost (its input estimate at the full
input price plus ``max_tokens`` of output) before it is sent, and settles
to its actual cost when its row finishes. A request whose worst case does
not fit what is left waits for requests in flight to settle; when nothing
is in flight and it still does not fit, sending stops. The only overspend
possible is in-flight requests costing more than their reservations, which
happens only when the input estimate was low.
"""

from __future__ import annotations

import math


class Budget:
    """Money reserved and spent against ``max_cost_usd`` (None: no cap)."""

    def __init__(self, max_cost_usd: float | None) -> None:
        if max_cost_usd is not None and not max_cost_usd >= 0:
            raise ValueError(f"max_cost must be >= 0 USD, got {max_cost_usd!r}")
        self.max_cost_usd = max_cost_usd
        self.spent = 0.0
        self.reserved = 0.0

    @property
    def left(self) -> float:
        if self.max_cost_usd is None:
            return math.inf
        return self.max_cost_usd - self.spent - self.reserved

    def try_reserve(self, worst_case: float) -> bool:
        """Reserve ``worst_case`` if it fits what is left."""
        if worst_case > self.left + 1e-12:
            return False
        self.reserved += worst_case
        return True

    def settle(self, reserved: float, actual: float) -> None:
        """Swap a reservation for what the request really cost."""
        self.reserved = max(0.0, self.reserved - reserved)
        self.spent += actual

    def exhausted_message(self) -> str:
        return (
            f"not sent: max_cost ${self.max_cost_usd:.4f} would be exceeded "
            f"(spent ${self.spent:.4f} so far)"
        )
