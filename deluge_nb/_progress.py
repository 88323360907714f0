"""Progress views: each reads the same ``StatsSnapshot`` on a timer.

Views are refreshed from the engine loop at a fixed pace, never once per
request, so a job of thousands of requests a second costs the view nothing
more than a slow one. ``progress=`` takes:

- ``"auto"`` (the default): the live panel in a notebook (an IPython kernel
  with ipywidgets installed), a rich bar in a terminal, one plain line
  every 30 s when output goes to a log; in a notebook without ipywidgets, a
  text bar and one line saying why;
- ``"panel"``: the ipywidgets panel (gauges, rate sliders, Pause and Stop);
- ``"rich"``: a rich bar with live requests/min, tokens/min and cost;
- ``"tqdm"``: a tqdm bar (a notebook bar under Jupyter) with the same;
- ``"manual"``: one plain line every 30 s, and one at the end;
- ``None`` or ``False``: nothing;
- any object with ``interval_s``, ``update(snap)`` and ``close(snap)``.

ipywidgets and rich are optional: they are imported only when a view
needs them, so ``import deluge_nb`` works without either.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import sys
from typing import Any, Protocol, TextIO

from ._errors import ConfigurationError
from ._limits import Limiter
from ._stats import JobStats, StatsSnapshot

logger = logging.getLogger(__name__)

PROGRESS_KINDS = ("auto", "panel", "rich", "tqdm", "manual", "none")
TQDM_REFRESH_S = 0.1
RICH_REFRESH_S = 0.1
MANUAL_INTERVAL_S = 30.0

WIDGETS_MISSING = (
    "ipywidgets is not installed; showing text progress. "
    "pip install ipywidgets for the live panel."
)

# The fallback explains itself once per process, not once per job.
_fallback_explained = False


class ProgressView(Protocol):
    interval_s: float

    def update(self, snap: StatsSnapshot) -> None: ...

    def close(self, snap: StatsSnapshot) -> None: ...


def rates_text(snap: StatsSnapshot) -> str:
    """Requests/min, tokens/min, errors and cost, for the text views."""
    lim = snap.limiter
    return (
        f"{lim.requests_last_minute:.0f} req/min, "
        f"{lim.tokens_last_minute:.0f} tok/min, "
        f"{snap.failed} err, ${snap.cost_usd:.4f}"
    )


class TqdmView:
    """A tqdm bar whose postfix carries the rates, errors and cost.

    Parameters
    ----------
    total
        Rows in the job.
    plain
        A text bar even in a notebook (where tqdm would draw a widget).
    stream
        Where a text bar goes; stderr by default.
    """

    interval_s = TQDM_REFRESH_S

    def __init__(
        self,
        total: int,
        *,
        plain: bool = False,
        stream: TextIO | None = None,
        desc: str = "deluge",
    ) -> None:
        if plain:
            from tqdm.std import tqdm
        else:
            from tqdm.auto import tqdm

        self._bar: Any = tqdm(
            total=total, desc=desc, unit="row", dynamic_ncols=True, file=stream
        )

    def update(self, snap: StatsSnapshot) -> None:
        self._bar.n = snap.done
        self._bar.set_postfix_str(rates_text(snap), refresh=False)
        self._bar.refresh()

    def close(self, snap: StatsSnapshot) -> None:
        self.update(snap)
        self._bar.close()


class RichView:
    """A rich bar with rows done, ETA, live rates and cost.

    Parameters
    ----------
    total
        Rows in the job.
    console
        A ``rich.console.Console``; by default one on stderr.
    """

    interval_s = RICH_REFRESH_S

    def __init__(self, total: int, *, console: Any = None) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
        )

        self._progress = Progress(
            TextColumn("[bold]deluge[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}", markup=False),
            console=console or Console(stderr=True),
            auto_refresh=False,
        )
        self._task = self._progress.add_task("deluge", total=total, status="starting")
        self._progress.start()

    def update(self, snap: StatsSnapshot) -> None:
        self._progress.update(
            self._task, completed=snap.done, status=self._status(snap)
        )
        self._progress.refresh()

    def close(self, snap: StatsSnapshot) -> None:
        try:
            self.update(snap)
        finally:
            self._progress.stop()

    @staticmethod
    def _status(snap: StatsSnapshot) -> str:
        eta = "?" if snap.eta_s is None else f"{snap.eta_s:.0f}s"
        lim = snap.limiter
        parts = [rates_text(snap)]
        if snap.state == "running":
            parts.append(f"ETA {eta}")
            if lim.paused_for_s > 0:
                parts.append(lim.reason)
        else:
            parts.append(f"{snap.state} in {snap.elapsed_s:.1f}s")
        return " | ".join(parts)


class ManualView:
    """A plain line every ``interval_s`` seconds, for logs and CI."""

    def __init__(
        self, interval_s: float = MANUAL_INTERVAL_S, stream: TextIO | None = None
    ) -> None:
        self.interval_s = interval_s
        self._stream = stream
        self._last = ""

    def update(self, snap: StatsSnapshot) -> None:
        line = f"[deluge] {snap.line()}"
        stream = self._stream or sys.stderr
        stream.write(line + "\n")
        stream.flush()
        self._last = line

    def close(self, snap: StatsSnapshot) -> None:
        # A job over before the first refresh would say the same thing twice.
        if f"[deluge] {snap.line()}" != self._last:
            self.update(snap)


# -- choosing a view --------------------------------------------------------


def in_kernel() -> bool:
    """Whether this process is a Jupyter kernel (JupyterLab, VS Code, Colab).

    Looks only at modules already imported, so a script pays nothing.
    """
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    if shell is None:
        return False
    if type(shell).__name__ == "ZMQInteractiveShell":
        return True
    # Subclasses such as Colab's shell.
    return "ipykernel" in sys.modules and getattr(shell, "kernel", None) is not None


def importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def _stderr_is_terminal() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def choose_auto() -> str:
    """The view ``"auto"`` stands for here: panel, text, rich, tqdm or manual."""
    if in_kernel():
        return "panel" if importable("ipywidgets") else "text"
    if _stderr_is_terminal():
        return "rich" if importable("rich") else "tqdm"
    return "manual"


def _explain_fallback(stream: TextIO) -> None:
    global _fallback_explained
    if _fallback_explained:
        return
    _fallback_explained = True
    stream.write(WIDGETS_MISSING + "\n")
    stream.flush()


def _panel_or_none(
    total: int, limiter: Limiter | None, controls: Any
) -> ProgressView | None:
    """The panel, or None (after saying why) when it cannot be shown."""
    if not importable("ipywidgets"):
        _explain_fallback(sys.stderr)
        return None
    from ._panel import Panel

    try:
        return Panel(total, limiter=limiter, controls=controls)
    except Exception:
        # A panel that cannot be built must not cost the user the job.
        logger.warning("progress panel failed; showing text progress", exc_info=True)
        return None


def _is_view(progress: Any) -> bool:
    return (
        not isinstance(progress, str | bool)
        and hasattr(progress, "update")
        and hasattr(progress, "close")
    )


def check_progress(progress: Any) -> None:
    """Raise ``ConfigurationError`` unless ``make_view`` can take ``progress``."""
    if progress is None or isinstance(progress, bool) or _is_view(progress):
        return
    if isinstance(progress, str) and progress in PROGRESS_KINDS:
        return
    raise ConfigurationError(
        f"progress={progress!r} is not one of "
        f"{', '.join(map(repr, PROGRESS_KINDS))}, None, or a view object"
    )


def make_view(
    progress: Any,
    total: int,
    *,
    limiter: Limiter | None = None,
    controls: Any = None,
) -> ProgressView | None:
    """The view for a ``progress=`` argument; a view object passes through.

    Parameters
    ----------
    progress
        One of ``PROGRESS_KINDS``, True (``"auto"``), None or False, or a
        view.
    total
        Rows in the job.
    limiter
        The job's limiter, which the panel's sliders read and change.
    controls
        The job (``pause``, ``resume``, ``cancel``, ``paused``), which the
        panel's buttons drive.
    """
    check_progress(progress)
    if progress is None or progress is False or progress == "none":
        return None
    if _is_view(progress):
        return progress  # type: ignore[no-any-return]
    kind = "auto" if progress is True else progress
    if kind == "auto":
        kind = choose_auto()
    if kind in ("panel", "text"):
        panel = _panel_or_none(total, limiter, controls)
        return panel if panel is not None else TqdmView(total, plain=True)
    if kind == "rich":
        if importable("rich"):
            return RichView(total)
        logger.warning("rich is not installed (pip install rich); showing tqdm")
        kind = "tqdm"
    if kind == "tqdm":
        plain = in_kernel() and not importable("ipywidgets")
        return TqdmView(total, plain=plain)
    return ManualView()


# -- driving a view ----------------------------------------------------------


async def drive(view: ProgressView, stats: JobStats) -> None:
    """Refresh ``view`` now and then every ``interval_s`` until cancelled."""
    failed = False
    while True:
        try:
            view.update(stats.snapshot())
        except Exception:
            # A broken view must never cost the user their results.
            if not failed:
                logger.debug("progress view update failed", exc_info=True)
            failed = True
        await asyncio.sleep(view.interval_s)


def close_quietly(view: ProgressView, stats: JobStats) -> None:
    """Close a view; a broken view must never cost the user their results."""
    with contextlib.suppress(Exception):
        view.close(stats.snapshot())
