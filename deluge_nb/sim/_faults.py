"""Fault injection: which requests fail on purpose, and how.

Every request draws one number from a `random.Random` seeded with
`SimConfig.seed` when it arrives, whether or not a fault is configured, so
the sequence of faults depends only on the seed and the arrival order. The
configured rates are laid end to end on [0, 1) in the order of
`FAULT_KINDS` (the storm last); a draw that lands in a kind's stretch gets
that fault. While a ``"429_storm"`` lasts, every request gets a 429 and its
draw is spent unused.

Which requests may receive a fault at all (not those carrying directives)
and what each fault does to the response is decided in `deluge_nb.sim._app`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from deluge_nb.sim._config import ALL_FAULT_KINDS, STORM, SimConfig

# Injected faults answered with an HTTP error status, by kind.
FAULT_STATUS = {
    "500": 500,
    "502": 502,
    "503": 503,
    "529": 529,
    "429": 429,
    STORM: 429,
}


@dataclass(frozen=True)
class Fault:
    """One injected fault.

    Attributes
    ----------
    kind : str
        A key of `SimConfig.faults`.
    retry_after : float or None
        For the 429 kinds, the wait the answer asks for in seconds.
    started_storm : bool
        Whether this request set off a storm.
    """

    kind: str
    retry_after: float | None = None
    started_storm: bool = False

    @property
    def status(self) -> int | None:
        """The HTTP status of the answer; None for reset, hang and truncated."""
        return FAULT_STATUS.get(self.kind)


class FaultInjector:
    """Decides, request by request, which fault (if any) to inject.

    Parameters
    ----------
    config : SimConfig
        Supplies the rates, the seed, ``fault_retry_after_s`` and
        ``storm_s``.
    """

    def __init__(self, config: SimConfig) -> None:
        self._rng = random.Random(config.seed)
        self._rates = [
            (kind, config.faults[kind])
            for kind in ALL_FAULT_KINDS
            if config.faults.get(kind, 0.0) > 0
        ]
        self._retry_after = config.fault_retry_after_s
        self._storm_s = config.storm_s
        self._storm_until: float | None = None

    def draw(self) -> float:
        """The number a newly arrived request draws, in [0, 1)."""
        return self._rng.random()

    def storm_remaining(self, now: float) -> float:
        """Seconds left of the current storm; 0.0 when there is none."""
        if self._storm_until is None:
            return 0.0
        return max(0.0, self._storm_until - now)

    def pick(self, draw: float, now: float) -> Fault | None:
        """The fault for a request that drew `draw`, arriving at `now`.

        Parameters
        ----------
        draw : float
            The request's number from `draw`.
        now : float
            The server clock's reading; storms are timed with it.

        Returns
        -------
        Fault or None
            None when the request should be served normally.
        """
        remaining = self.storm_remaining(now)
        if remaining > 0:
            return Fault(STORM, retry_after=remaining)

        edge = 0.0
        for kind, rate in self._rates:
            edge += rate
            if draw >= edge:
                continue
            if kind == STORM:
                self._storm_until = now + self._storm_s
                return Fault(STORM, retry_after=self._storm_s, started_storm=True)
            if kind == "429":
                return Fault(kind, retry_after=self._retry_after)
            return Fault(kind)
        return None
