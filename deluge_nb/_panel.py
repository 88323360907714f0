"""The notebook panel: live gauges, rate sliders and job buttons.

Built from core ipywidgets only (no custom JavaScript), so it renders
wherever widgets do: JupyterLab, Notebook 7, VS Code and Colab. The engine
calls ``update`` every ``interval_s`` and ``close`` once, both from its own
loop thread; slider and button callbacks run wherever the kernel handles
the frontend's message, usually its main thread.

What reaches the kernel when: kernel-to-frontend updates (the gauges) flow
while a cell blocks, because ipykernel sends them from its own IOPub
thread. Frontend-to-kernel messages (a slider moved, a button pressed) are
handled between cells: a blocking ``complete()`` receives them only after
it returns, on every ipykernel tried (6.25 to 7.4); an awaited
``acomplete()`` receives them at once from ipykernel 7.4 on; a job started
with ``submit()`` receives them at once everywhere, since its cell has
ended. The panel says so when it matters.

Module layout: pure formatting helpers first (tested without widgets),
then ``Panel``.
"""

from __future__ import annotations

import html
import math
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import ipywidgets as widgets

from ._limits import Limiter
from ._stats import StatsSnapshot

PANEL_REFRESH_S = 0.2

# A slider the user moved recently is not moved back by a refresh: their
# message may still be on its way to the limiter.
USER_HOLD_S = 2.0

# Bars move in steps of this fraction of their range, so a refresh that
# changes nothing visible sends nothing.
GAUGE_RESOLUTION = 0.005

BAR_STYLES = {
    "running": "info",
    "cooling down": "warning",
    "paused": "",
    "done": "success",
    "failed": "danger",
    "stopped": "",
}

# Log-spaced values per decade for the rate sliders.
_MANTISSAS = (1.0, 1.5, 2.0, 3.0, 5.0, 7.0)
_CONCURRENCY_STEPS = (
    *range(1, 11),
    12,
    16,
    20,
    24,
    32,
    48,
    64,
    96,
    128,
    192,
    256,
    384,
    512,
    768,
    1024,
)

BLOCKING_NOTE = (
    "A running cell (a blocking <code>complete()</code> or "
    "<code>job.result()</code>) holds the kernel, so it reads the sliders and "
    "buttons only after that cell ends, on ipykernel 6 and 7 alike. Interrupt "
    "the kernel (■) to stop now; <code>job = df.deluge.submit(...)</code> "
    "keeps them live."
)

# The note shows after the kernel has been seen busy this many refreshes in
# a row, so the moment a submit() cell takes to end does not flash it.
BUSY_REFRESHES = 2


class JobControls(Protocol):
    """What the buttons drive: the running job."""

    @property
    def paused(self) -> bool: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def cancel(self) -> None: ...

    @property
    def largest_request_tokens(self) -> float:
        """Tokens/min below which a row still to send could never go."""
        ...


# -- formatting ----------------------------------------------------------


def display_state(snap: StatsSnapshot) -> str:
    """The state the panel shows: the job's, with cooling down split out."""
    if snap.state in ("stopped", "cancelled"):
        return "stopped"
    if snap.state == "running" and snap.limiter.paused_for_s > 0:
        return "cooling down"
    return snap.state


def fmt_count(value: float) -> str:
    """A count in about three significant digits: 1.5, 412, 1.5k, 60k, 2.4M."""
    if math.isinf(value):
        return "no limit"
    magnitude = abs(value)
    if magnitude < 10 and value != round(value):
        return f"{value:.2g}"
    if magnitude < 999.5:
        return f"{value:.0f}"
    if magnitude < 999_500:
        return f"{value / 1e3:.3g}k"
    if magnitude < 999_500_000:
        return f"{value / 1e6:.3g}M"
    return f"{value / 1e9:.3g}G"


def fmt_duration(seconds: float | None) -> str:
    """Seconds as ``8 s``, ``3 m 20 s`` or ``2 h 5 m``; ``?`` when unknown."""
    if seconds is None or math.isnan(seconds) or math.isinf(seconds):
        return "?"
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} m {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} m"


def fmt_cost(cost: float, max_cost: float | None = None) -> str:
    """Dollars so far, and against the budget when there is one."""
    text = f"${cost:.4f}" if cost < 1 else f"${cost:,.2f}"
    if max_cost is None:
        return text
    share = cost / max_cost if max_cost > 0 else 1.0
    return f"{text} of ${max_cost:,.2f} ({share:.0%})"


def gauge_fraction(used: float, limit: float) -> float:
    """How full a gauge is, in steps of ``GAUGE_RESOLUTION``; 0 for no limit."""
    if math.isinf(limit) or limit <= 0:
        return 0.0
    steps = round(min(used / limit, 1.0) / GAUGE_RESOLUTION)
    return steps * GAUGE_RESOLUTION


def rate_text(used: float, limit: float, configured: float, unit: str) -> str:
    """``412 / 600 req/min``, naming the setting when the limit in force is lower."""
    if math.isinf(limit):
        return f"{fmt_count(used)} {unit} (no limit)"
    text = f"{fmt_count(used)} / {fmt_count(limit)} {unit}"
    if limit < configured * 0.995:
        text += f" (set {fmt_count(configured)})"
    return text


def rows_text(snap: StatsSnapshot) -> str:
    """``12 / 20 rows · ETA 8 s`` while running, the elapsed time after."""
    text = f"{snap.done} / {snap.total} rows"
    if snap.state == "running":
        return f"{text} · ETA {fmt_duration(snap.eta_s)}"
    return f"{text} · {fmt_duration(snap.elapsed_s)}"


def counters_text(snap: StatsSnapshot) -> str:
    """Retries, 429s, errors, skipped and cached rows, and cost on one line."""
    max_cost = snap.max_cost_usd
    parts = [
        f"retries {snap.retries}",
        f"429s {snap.rate_limited}",
        f"errors {snap.failed}",
    ]
    if snap.skipped:
        parts.append(f"skipped {snap.skipped}")
    cached = getattr(snap, "cached", 0)
    if cached:
        parts.append(f"cached {cached}")
    parts.append(f"cost {fmt_cost(snap.cost_usd, max_cost)}")
    return " · ".join(parts)


def pace_text(state: str, reason: str) -> str:
    """Why the job goes at the pace it does, in the panel's words."""
    if state == "paused":
        return "paused: nothing new is sent until Resume (or job.resume())"
    if state in ("running", "cooling down"):
        return reason
    return "-"


def ladder(low: float, high: float, current: float | None = None) -> list[float]:
    """Log-spaced slider stops from ``low`` to ``high``, with ``current`` in."""
    stops: set[float] = set()
    for exponent in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1):
        for mantissa in _MANTISSAS:
            value = mantissa * 10.0**exponent
            if low <= value <= high:
                stops.add(value)
    if current is not None and math.isfinite(current):
        stops.add(float(current))
    return sorted(stops)


def rate_options(current: float, low: float, high: float) -> list[tuple[str, float]]:
    """Options of a rate slider: the ladder up to ``high``, then no limit."""
    top = max(high, current * 10) if math.isfinite(current) else high
    options = [(fmt_count(v), v) for v in ladder(low, top, current)]
    options.append(("no limit", math.inf))
    return _unique_labels(options)


def concurrency_options(current: int) -> list[tuple[str, float]]:
    stops = sorted({*_CONCURRENCY_STEPS, int(current)})
    return [(str(v), float(v)) for v in stops]


def _unique_labels(options: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """Selection labels must differ; 1.2345k and 1.2346k both read 1.23k."""
    seen: set[str] = set()
    unique = []
    for label, value in options:
        if label in seen:
            label = f"{value:,.0f}"
        seen.add(label)
        unique.append((label, value))
    return unique


def cell_blocks_kernel() -> bool:
    """Whether the kernel's main thread is inside a cell that has not yielded.

    A cell running synchronously (a blocking ``complete()``, ``job.result()``,
    ``time.sleep``) has IPython's ``run_code`` on the main thread's stack,
    and the kernel handles no widget message until it ends. An idle kernel,
    or one whose cell is suspended in ``await``, has the main thread in its
    event loop instead.
    """
    shell_module = sys.modules.get("IPython.core.interactiveshell")
    if shell_module is None:
        return False
    run_code = shell_module.InteractiveShell.run_code.__code__
    frame = sys._current_frames().get(threading.main_thread().ident or -1)
    while frame is not None:
        if frame.f_code is run_code:
            return True
        frame = frame.f_back
    return False


# -- the panel ------------------------------------------------------------


class _Gauge:
    """A row of the panel: a name, a bar and a line of text."""

    def __init__(
        self, name: str, bar: widgets.FloatProgress | widgets.IntProgress
    ) -> None:
        self.bar = bar
        self.bar.layout = widgets.Layout(width="260px", height="16px")
        self.text = widgets.Label("")
        self.row = widgets.HBox(
            [widgets.Label(name, layout=widgets.Layout(width="120px")), bar, self.text],
            layout=widgets.Layout(align_items="center"),
        )


class Panel:
    """Live gauges, rate sliders and job buttons for one job.

    Parameters
    ----------
    total
        Rows in the job.
    limiter
        The job's limiter: the sliders start at its settings and change
        them. None shows the gauges without sliders.
    controls
        The running job, for the Pause/Resume and Stop buttons; None shows
        no buttons.
    busy
        Tells whether a running cell holds the kernel, so that slider and
        button messages wait (then a note says so); None never shows it.
    show
        Display the panel now (in the running cell's output).
    title
        The panel's heading.
    """

    interval_s = PANEL_REFRESH_S

    def __init__(
        self,
        total: int,
        *,
        limiter: Limiter | None = None,
        controls: JobControls | None = None,
        busy: Callable[[], bool] | None = cell_blocks_kernel,
        show: bool = True,
        title: str = "deluge_nb",
    ) -> None:
        self._limiter = limiter
        self._controls = controls
        self._title = title
        self._lock = threading.RLock()
        self._shown: dict[tuple[int, str], Any] = {}
        self._syncing = False
        self._touched: dict[str, float] = {}
        self._closed = False
        self._busy = busy
        self._busy_seen = 0
        self.trait_sets = 0  # how many traits updates have set, for tests

        self.heading = widgets.HTML()
        self.rows = _Gauge("rows", widgets.IntProgress(min=0, max=max(total, 1)))
        self.requests = _Gauge("requests/min", widgets.FloatProgress(min=0, max=1))
        self.tokens = _Gauge("tokens/min", widgets.FloatProgress(min=0, max=1))
        self.input_tokens = _Gauge("input tok/min", widgets.FloatProgress(min=0, max=1))
        self.output_tokens = _Gauge(
            "output tok/min", widgets.FloatProgress(min=0, max=1)
        )
        self.in_flight = _Gauge("in flight", widgets.FloatProgress(min=0, max=1))
        self.counters = widgets.Label("")
        self.pace = widgets.Label("")
        self.gauges = [
            self.rows,
            self.requests,
            self.tokens,
            self.input_tokens,
            self.output_tokens,
            self.in_flight,
        ]
        for gauge in (self.input_tokens, self.output_tokens):
            gauge.row.layout.display = "none"

        children: list[widgets.Widget] = [
            self.heading,
            *(g.row for g in self.gauges),
            self.counters,
            self.pace,
        ]
        self.sliders: dict[str, widgets.SelectionSlider] = {}
        if limiter is not None:
            children.append(self._make_sliders(limiter))
        self.pause_button: widgets.Button | None = None
        self.stop_button: widgets.Button | None = None
        if controls is not None:
            children.append(self._make_buttons())
        self.note = widgets.HTML(
            f'<span style="font-size: 0.85em; opacity: 0.75">{BLOCKING_NOTE}</span>',
            layout=widgets.Layout(display="none"),
        )
        children.append(self.note)
        self.box = widgets.VBox(
            children,
            layout=widgets.Layout(
                border="1px solid var(--jp-border-color2, #ccc)", padding="6px"
            ),
        )

        self._render_heading("starting", 0.0)
        if show:
            from IPython.display import display

            display(self)  # type: ignore[no-untyped-call]  # IPython is untyped

    # -- the view protocol ------------------------------------------------

    def update(self, snap: StatsSnapshot) -> None:
        """Show ``snap``; sets only the traits whose values changed."""
        with self._lock:
            self._render(snap)

    def close(self, snap: StatsSnapshot) -> None:
        """Show the final state and retire the controls."""
        with self._lock:
            self._closed = True
            self._render(snap)
            for slider in self.sliders.values():
                self._set(slider, "disabled", True)
            for button in (self.pause_button, self.stop_button):
                if button is not None:
                    self._set(button, "disabled", True)

    # -- display ------------------------------------------------------------

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        bundle: dict[str, Any] = self.box._repr_mimebundle_(**kwargs)
        bundle["text/plain"] = (
            f"{self._title} progress panel (shown by a widget frontend such as "
            "JupyterLab; the job runs either way)"
        )
        return bundle

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Panel {self._title!r} {state}>"

    # -- rendering ---------------------------------------------------------

    def _render(self, snap: StatsSnapshot) -> None:
        state = display_state(snap)
        style = BAR_STYLES.get(state, "")
        lim = snap.limiter
        self._render_heading(state, snap.elapsed_s)

        self._set(self.rows.bar, "max", max(snap.total, 1))
        self._set(self.rows.bar, "value", min(snap.done, max(snap.total, 1)))
        self._set(self.rows.text, "value", rows_text(snap))
        self._show_rate(
            self.requests,
            lim.requests_last_minute,
            lim.max_requests_per_minute,
            lim.configured_requests_per_minute,
            "req/min",
        )
        self._show_rate(
            self.tokens,
            lim.tokens_last_minute,
            lim.max_tokens_per_minute,
            lim.configured_tokens_per_minute,
            "tok/min",
        )
        for gauge, used, limit in (
            (
                self.input_tokens,
                lim.input_tokens_last_minute,
                lim.max_input_tokens_per_minute,
            ),
            (
                self.output_tokens,
                lim.output_tokens_last_minute,
                lim.max_output_tokens_per_minute,
            ),
        ):
            finite = math.isfinite(limit)
            self._set(gauge.row.layout, "display", "" if finite else "none")
            if finite:
                self._show_rate(gauge, used, limit, limit, "tok/min")
        self._set(
            self.in_flight.bar,
            "value",
            gauge_fraction(lim.in_flight, lim.max_concurrent_requests),
        )
        self._set(
            self.in_flight.text,
            "value",
            f"{lim.in_flight} / {lim.max_concurrent_requests} requests",
        )
        for gauge in self.gauges:
            self._set(gauge.bar, "bar_style", style)

        self._set(self.counters, "value", counters_text(snap))
        self._set(self.pace, "value", f"pace: {pace_text(state, lim.reason)}")
        self._sync_sliders(snap)
        self._sync_buttons(state)
        self._show_note()

    def _show_note(self) -> None:
        """Say why the controls do nothing yet, while a cell holds the kernel."""
        interactive = bool(self.sliders) or self._controls is not None
        if self._closed or not interactive or self._busy is None:
            self._set(self.note.layout, "display", "none")
            return
        self._busy_seen = self._busy_seen + 1 if self._busy() else 0
        held = self._busy_seen >= BUSY_REFRESHES
        self._set(self.note.layout, "display", "" if held else "none")

    def _render_heading(self, state: str, elapsed_s: float) -> None:
        colour = {
            "cooling down": "#b36b00",
            "done": "#2e7d32",
            "failed": "#c62828",
        }.get(state, "inherit")
        self._set(
            self.heading,
            "value",
            f"<b>{html.escape(self._title)}</b> · "
            f'<span style="color: {colour}">{html.escape(state)}</span> · '
            f"{fmt_duration(elapsed_s)}",
        )

    def _show_rate(
        self, gauge: _Gauge, used: float, limit: float, configured: float, unit: str
    ) -> None:
        self._set(gauge.bar, "value", gauge_fraction(used, limit))
        self._set(
            gauge.bar.layout, "visibility", "hidden" if math.isinf(limit) else "visible"
        )
        self._set(gauge.text, "value", rate_text(used, limit, configured, unit))

    def _set(self, obj: Any, name: str, value: Any) -> None:
        """Set a trait unless it already shows ``value`` (each set is a message)."""
        key = (id(obj), name)
        if key in self._shown and self._shown[key] == value:
            return
        self._shown[key] = value
        setattr(obj, name, value)
        self.trait_sets += 1

    # -- sliders -------------------------------------------------------------

    def _make_sliders(self, limiter: Limiter) -> widgets.Widget:
        snap = limiter.snapshot()
        specs: Iterable[tuple[str, str, list[tuple[str, float]], float]] = (
            (
                "requests",
                "requests/min",
                rate_options(snap.configured_requests_per_minute, 1, 100_000),
                snap.configured_requests_per_minute,
            ),
            (
                "tokens",
                "tokens/min",
                rate_options(snap.configured_tokens_per_minute, 1_000, 100_000_000),
                snap.configured_tokens_per_minute,
            ),
            (
                "concurrency",
                "concurrency",
                concurrency_options(snap.max_concurrent_requests),
                float(snap.max_concurrent_requests),
            ),
        )
        for name, label, options, value in specs:
            slider = widgets.SelectionSlider(
                options=options,
                value=value,
                description=label,
                continuous_update=False,
                style={"description_width": "90px"},
                layout=widgets.Layout(width="330px"),
            )
            slider.observe(self._on_slider(name), names="value")
            self.sliders[name] = slider
        return widgets.VBox(list(self.sliders.values()))

    def _on_slider(self, name: str) -> Callable[[dict[str, Any]], None]:
        def changed(change: dict[str, Any]) -> None:
            with self._lock:
                if self._syncing or self._limiter is None:
                    return
                if self._closed:
                    # A move queued behind a blocking cell: the job is over,
                    # so show the setting in force again.
                    self._sync_sliders(None, force=True)
                    return
                self._touched[name] = time.monotonic()
                self._shown[(id(self.sliders[name]), "value")] = change["new"]
                if not self._apply(name, change["new"]):
                    self._sync_sliders(None, force=True)

        return changed

    def _apply(self, name: str, value: float) -> bool:
        """Set the limit; False if it was raised to what the job needs."""
        assert self._limiter is not None
        if name == "requests":
            self._limiter.set_limits(max_requests_per_minute=value)
        elif name == "tokens":
            # Below its largest request a job could never send that row:
            # a slider dragged too far slows the job, it does not fail rows.
            floor = 0.0
            if self._controls is not None:
                floor = self._controls.largest_request_tokens
            self._limiter.set_limits(max_tokens_per_minute=max(value, floor))
            return value >= floor
        else:
            self._limiter.set_limits(max_concurrent_requests=int(value))
        return True

    def _sync_sliders(self, snap: StatsSnapshot | None, force: bool = False) -> None:
        """Move a slider to the setting in force when someone else changed it."""
        if not self.sliders:
            return
        if snap is None:
            assert self._limiter is not None
            lim = self._limiter.snapshot()
        else:
            lim = snap.limiter
        settings = {
            "requests": lim.configured_requests_per_minute,
            "tokens": lim.configured_tokens_per_minute,
            "concurrency": float(lim.max_concurrent_requests),
        }
        now = time.monotonic()
        for name, value in settings.items():
            slider = self.sliders[name]
            if slider.value == value:
                continue
            if not force and now - self._touched.get(name, -math.inf) < USER_HOLD_S:
                continue
            self._syncing = True
            try:
                with slider.hold_sync():
                    if value not in [v for _, v in slider.options]:
                        slider.options = _with_value(slider, name, value)
                    slider.value = value
                self._shown[(id(slider), "value")] = value
                self.trait_sets += 1
            finally:
                self._syncing = False

    # -- buttons -------------------------------------------------------------

    def _make_buttons(self) -> widgets.Widget:
        self.pause_button = widgets.Button(
            description="Pause", icon="pause", layout=widgets.Layout(width="110px")
        )
        self.stop_button = widgets.Button(
            description="Stop",
            icon="stop",
            button_style="danger",
            layout=widgets.Layout(width="110px"),
        )
        self.pause_button.on_click(self._on_pause)
        self.stop_button.on_click(self._on_stop)
        return widgets.HBox([self.pause_button, self.stop_button])

    def _on_pause(self, _button: widgets.Button) -> None:
        controls = self._controls
        if controls is None or self._closed:
            return
        if controls.paused:
            controls.resume()
        else:
            controls.pause()
        with self._lock:
            self._sync_buttons("paused" if controls.paused else "running")

    def _on_stop(self, _button: widgets.Button) -> None:
        controls = self._controls
        if controls is None or self._closed:
            return
        controls.cancel()
        with self._lock:
            assert self.stop_button is not None
            self._set(self.stop_button, "description", "Stopping…")
            self._set(self.stop_button, "disabled", True)

    def _sync_buttons(self, state: str) -> None:
        if self.pause_button is None or self._controls is None:
            return
        paused = state == "paused" or bool(self._controls.paused)
        self._set(self.pause_button, "description", "Resume" if paused else "Pause")
        self._set(self.pause_button, "icon", "play" if paused else "pause")
        if self.stop_button is not None and state in ("done", "failed", "stopped"):
            self._set(
                self.stop_button,
                "description",
                "Stopped" if state == "stopped" else "Stop",
            )


def _with_value(
    slider: widgets.SelectionSlider, name: str, value: float
) -> list[tuple[str, float]]:
    """The slider's options with ``value`` added, for a setting off the ladder."""
    if name == "concurrency":
        return concurrency_options(int(value))
    options = [(label, v) for label, v in slider.options if v != value]
    options.append((fmt_count(value), value))
    return _unique_labels(sorted(options, key=lambda option: option[1]))
