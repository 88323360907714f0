"""The panel on a real kernel: notebooks executed with nbclient.

Each test writes a notebook, runs it on an IPython kernel of this very
Python (a kernelspec made in a temporary folder), and reads what a
frontend would have received: the panel's display output and the widget
state nbclient saves in the notebook's metadata.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("ipywidgets")

WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"

SETUP = """\
import pandas as pd
import deluge_nb
from deluge_nb.sim import serve

sim = serve(requests_per_minute=600, tokens_per_minute=60_000, latency_s=0.05)
deluge_nb.register_model("sim-nb", base_url=sim.base_url, tokenizer="o200k_base")
"""


@pytest.fixture
def kernel_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ``python3`` kernelspec that runs this interpreter, found first."""
    spec = tmp_path / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [
                    sys.executable,
                    "-m",
                    "ipykernel_launcher",
                    "-f",
                    "{connection_file}",
                ],
                "display_name": "deluge_nb tests",
                "language": "python",
            }
        )
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("DELUGE_NB_CACHE", "off")
    return tmp_path


class RecordingClient(nbclient.NotebookClient):  # type: ignore[misc]
    """Keeps the time each widget update arrived at."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.comm_times: list[tuple[float, str, dict[str, Any]]] = []

    def handle_comm_msg(
        self, outs: list[Any], msg: dict[str, Any], cell_index: int
    ) -> None:
        data = msg["content"].get("data", {})
        self.comm_times.append(
            (time.monotonic(), msg["content"]["comm_id"], data.get("state", {}))
        )
        super().handle_comm_msg(outs, msg, cell_index)


def notebook(*sources: str) -> Any:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in sources]
    return nb


def client_for(nb: Any, workdir: Path) -> RecordingClient:
    return RecordingClient(
        nb,
        kernel_name="python3",
        timeout=120,
        store_widget_state=True,
        resources={"metadata": {"path": str(workdir)}},
    )


def widget_states(nb: Any) -> dict[str, dict[str, Any]]:
    """Model id -> saved state (with ``_model_name``) of every widget."""
    saved = nb.metadata["widgets"][WIDGET_STATE]["state"]
    return {model_id: entry["state"] for model_id, entry in saved.items()}


def of_model(states: dict[str, dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [s for s in states.values() if s["_model_name"] == name]


def texts(states: dict[str, dict[str, Any]]) -> list[str]:
    return [str(s.get("value", "")) for s in states.values()]


def stream_text(cell: Any) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


def rows_shown(client: RecordingClient, prefix: str) -> bool:
    return any(
        str(state.get("value", "")).startswith(prefix)
        for _, _, state in client.comm_times
    )


@pytest.fixture(scope="module", autouse=True)
def _no_leftover_loops() -> Iterator[None]:
    yield
    # nbclient runs its own loops; none may be left set for later tests.
    asyncio.set_event_loop(None)


def test_blocking_complete_shows_the_panel_and_saves_its_final_state(
    kernel_env: Path,
) -> None:
    nb = notebook(
        SETUP,
        'df = pd.DataFrame({"text": [f"row {i}" for i in range(20)]})\n'
        'out = df.deluge.complete("sim-nb", prompt="[[sim:echo]]{text}",'
        ' progress="auto", cache=False)',
        'print(out["response"].tolist()[:3], out["error"].notna().sum())',
    )
    client = client_for(nb, kernel_env)
    client.execute()

    assert stream_text(nb.cells[2]).strip() == "['row 0', 'row 1', 'row 2'] 0"

    # The panel is the job cell's one display output, a view of a saved model.
    displays = [o for o in nb.cells[1].outputs if o.output_type == "display_data"]
    assert len(displays) == 1
    states = widget_states(nb)
    root = displays[0]["data"][WIDGET_VIEW]["model_id"]
    assert states[root]["_model_name"] == "VBoxModel"

    # Final values: every row done, every bar green, the controls retired.
    (rows,) = of_model(states, "IntProgressModel")
    assert (rows["value"], rows["max"]) == (20, 20)
    assert rows["bar_style"] == "success"
    bars = of_model(states, "FloatProgressModel")
    assert bars and {b["bar_style"] for b in bars} == {"success"}
    assert any(t.startswith("20 / 20 rows") for t in texts(states))
    assert any("done" in t for t in texts(states) if "deluge_nb" in t)
    assert "0 / 64 requests" in texts(states)
    sliders = of_model(states, "SelectionSliderModel")
    assert len(sliders) == 3 and all(s["disabled"] for s in sliders)
    assert "errors 0" in " ".join(texts(states))


def test_k03_gauges_move_while_the_cell_blocks_and_interrupt_stops_it(
    kernel_env: Path,
) -> None:
    nb = notebook(
        SETUP,
        'df = pd.DataFrame({"text": ["a", "b", "c"]})\n'
        'out = df.deluge.complete("sim-nb", prompt="[[sim:sleep=2]][[sim:echo]]{text}",'
        " max_concurrent_requests=1, progress='auto', cache=False)",
        'print(out["response"].notna().sum(), out["error"].tolist())',
    )
    client = client_for(nb, kernel_env)
    timings: dict[str, float] = {}

    async def run() -> None:
        async with client.async_setup_kernel():
            await client.async_execute_cell(nb.cells[0], 0)

            async def interrupt() -> None:
                # Stop the job once the panel shows the first row done, as a
                # person watching it would.
                deadline = time.monotonic() + 20
                while not rows_shown(client, "1 / 3 rows"):
                    assert time.monotonic() < deadline, "the panel did not move"
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.3)
                timings["interrupt"] = time.monotonic()
                await client.km.interrupt_kernel()

            timings["start"] = time.monotonic()
            stopper = asyncio.ensure_future(interrupt())
            await client.async_execute_cell(nb.cells[1], 1)
            timings["end"] = time.monotonic()
            await stopper
            await client.async_execute_cell(nb.cells[2], 2)
            client.set_widgets_metadata()

    asyncio.run(run())

    # The interrupt took effect within about a second, keeping the first row.
    assert timings["end"] - timings["interrupt"] < 1.5
    done, errors = stream_text(nb.cells[2]).split(" ", 1)
    assert done == "1"
    assert "cancelled" in errors

    # While the cell blocked, the rows gauge reached 1 / 3 before the
    # interrupt: kernel-to-frontend updates flow during a blocking cell.
    rows_seen = [
        (at, state["value"])
        for at, _, state in client.comm_times
        if isinstance(state.get("value"), str) and " rows" in state["value"]
    ]
    before = [v for at, v in rows_seen if at < timings["interrupt"]]
    assert any(v.startswith("1 / 3 rows") for v in before), rows_seen
    assert len([at for at, _, _ in client.comm_times if at < timings["interrupt"]]) > 5

    # The panel's last word: stopped, one row, nothing left in flight (K09).
    states = widget_states(nb)
    assert any(t.startswith("1 / 3 rows") for t in texts(states))
    assert any("stopped" in t for t in texts(states) if "deluge_nb" in t)
    assert "0 / 1 requests" in texts(states)


def test_k05_the_demo_notebook_runs_and_shows_the_live_panel(
    kernel_env: Path,
) -> None:
    demo = Path(__file__).resolve().parent.parent / "notebooks" / "demo.ipynb"
    nb = nbformat.read(demo, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")

    client_for(nb, demo.parent).execute()

    code = [c for c in nb.cells if c.cell_type == "code"]
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert errors == []
    panels = [
        o["data"][WIDGET_VIEW]["model_id"]
        for c in code
        for o in c.outputs
        if o.output_type == "display_data" and WIDGET_VIEW in o["data"]
    ]
    assert panels, "complete() showed no panel"
    states = widget_states(nb)
    assert states[panels[0]]["_model_name"] == "VBoxModel"
    finished = [t for t in texts(states) if re.match(r"(\d+) / \1 rows", t)]
    assert finished  # complete()'s panel ran to the end
    assert "cancelled" not in str(code[-2].outputs)


def test_submit_panel_lands_in_its_own_cell_under_run_all(kernel_env: Path) -> None:
    nb = notebook(
        SETUP,
        'df = pd.DataFrame({"text": ["a", "b", "c"]})\n'
        'job = df.deluge.submit("sim-nb", prompt="[[sim:echo]]{text}", cache=False)',
        "result = job.result(timeout=30)",
    )
    client_for(nb, kernel_env).execute()

    views = [
        o
        for o in nb.cells[1].outputs
        if o.output_type == "display_data" and WIDGET_VIEW in o["data"]
    ]
    assert len(views) == 1
    assert "/ 3 rows" in " ".join(texts(widget_states(nb)))
    # NOTE: the panel's later updates come from the engine thread while the
    # next cell runs; nbclient keeps only messages whose parent is the cell
    # it is executing, so the saved state may stop at the first refresh.
    # Real frontends apply comm messages whatever their parent: the browser
    # test watches the same panel move to the end.


def test_k04_without_ipywidgets_a_kernel_gets_text_progress_and_one_reason(
    kernel_env: Path,
) -> None:
    nb = notebook(
        'import sys\nsys.modules["ipywidgets"] = None  # as if not installed\n' + SETUP,
        'df = pd.DataFrame({"text": ["a", "b", "c"]})\n'
        'echo = "[[sim:echo]]{text}"\n'
        'out = df.deluge.complete("sim-nb", prompt=echo, cache=False)\n'
        'out2 = df.deluge.complete("sim-nb", prompt=echo + "!", cache=False)',
        'print(out["response"].tolist(), out2["response"].tolist())',
    )
    client_for(nb, kernel_env).execute()

    job = nb.cells[1]
    assert not [o for o in job.outputs if o.output_type == "display_data"]
    stderr = "".join(
        o.text for o in job.outputs if o.output_type == "stream" and o.name == "stderr"
    )
    reason = (
        "ipywidgets is not installed; showing text progress. "
        "pip install ipywidgets for the live panel."
    )
    assert stderr.count(reason) == 1
    assert "3/3" in stderr
    assert stream_text(nb.cells[2]).strip() == "['a', 'b', 'c'] ['a!', 'b!', 'c!']"
