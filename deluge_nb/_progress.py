"""Progress views: each reads the same ``StatsSnapshot`` on a timer.

Views are refreshed from the engine loop at a fixed pace, never once per
request, so a job of thousands of requests a second costs the view nothing
more than a slow one. ``progress=`` takes:

- ``"tqdm"``: a tqdm bar (a notebook bar under Jupyter) with live
  requests/min, tokens/min, errors and cost;
- ``"manual"``: one plain line every 30 s, and one at the end;
- ``None`` or ``False``: nothing;
- ``"auto"``: tqdm for now.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import Any, Protocol, TextIO

from ._stats import JobStats, StatsSnapshot

PROGRESS_KINDS = ("auto", "tqdm", "manual", "none")
TQDM_REFRESH_S = 0.1
MANUAL_INTERVAL_S = 30.0


class ProgressView(Protocol):
    interval_s: float

    def update(self, snap: StatsSnapshot) -> None: ...

    def close(self, snap: StatsSnapshot) -> None: ...


class TqdmView:
    """A tqdm bar whose postfix carries the rates, errors and cost."""

    interval_s = TQDM_REFRESH_S

    def __init__(self, total: int, desc: str = "deluge") -> None:
        from tqdm.auto import tqdm

        self._bar: Any = tqdm(total=total, desc=desc, unit="row", dynamic_ncols=True)

    def update(self, snap: StatsSnapshot) -> None:
        lim = snap.limiter
        self._bar.n = snap.done
        self._bar.set_postfix_str(
            f"{lim.requests_last_minute:.0f} req/min, "
            f"{lim.tokens_last_minute:.0f} tok/min, "
            f"{snap.failed} err, ${snap.cost_usd:.4f}",
            refresh=False,
        )
        self._bar.refresh()

    def close(self, snap: StatsSnapshot) -> None:
        self.update(snap)
        self._bar.close()


class ManualView:
    """A plain line every ``interval_s`` seconds, for logs and CI."""

    def __init__(
        self, interval_s: float = MANUAL_INTERVAL_S, stream: TextIO | None = None
    ) -> None:
        self.interval_s = interval_s
        self._stream = stream

    def update(self, snap: StatsSnapshot) -> None:
        stream = self._stream or sys.stderr
        stream.write(f"[deluge] {snap.line()}\n")
        stream.flush()

    def close(self, snap: StatsSnapshot) -> None:
        self.update(snap)


def make_view(
    progress: Any, total: int, *, limiter: Any = None, controls: Any = None
) -> ProgressView | None:
    """The view for a ``progress=`` argument; a view object passes through."""
    if progress is None or progress is False or progress == "none":
        return None
    if progress is True or progress == "auto":
        progress = "tqdm"
    if progress == "tqdm":
        return TqdmView(total)
    if progress == "manual":
        return ManualView()
    if hasattr(progress, "update") and hasattr(progress, "close"):
        return progress  # type: ignore[no-any-return]
    raise ValueError(
        f"progress={progress!r} is not one of {', '.join(map(repr, PROGRESS_KINDS))}"
        " or None"
    )


async def drive(view: ProgressView, stats: JobStats) -> None:
    """Refresh ``view`` now and then every ``interval_s`` until cancelled."""
    while True:
        with contextlib.suppress(Exception):
            view.update(stats.snapshot())
        await asyncio.sleep(view.interval_s)


def close_quietly(view: ProgressView, stats: JobStats) -> None:
    """Close a view; a broken view must never cost the user their results."""
    with contextlib.suppress(Exception):
        view.close(stats.snapshot())
