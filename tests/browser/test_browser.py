"""The panel in a real browser: JupyterLab on loopback, headless Chromium.

One notebook, run cell by cell the way a person would: a blocking
``complete()`` whose gauges move, then a ``submit()`` job whose
requests/min slider is moved (the job's rate must follow) and whose Stop
button is pressed (the job must stop and keep its finished rows). A
screenshot of the panel mid-run is saved to ``docs/panel.png``.

Needs Debian's Chromium at /usr/bin/chromium (``scripts/setup_browser.sh``)
and the ``playwright`` package; Playwright's own browser download is never
used. Without them the test is skipped, unless ``DELUGE_REQUIRE_BROWSER=1``
(as in CI), when it fails.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.browser

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT = REPO / "docs" / "panel.png"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

# Cells of the notebook under test, by role.
SETUP = """\
import time
import pandas as pd
import deluge_nb
from deluge_nb.sim import serve

sim = serve(requests_per_minute=6000, tokens_per_minute=60_000, latency_s=0.3)
deluge_nb.register_model(
    "sim-browser", base_url=sim.base_url, tokenizer="o200k_base",
    input_price=0.15, output_price=0.60,
)
df = pd.DataFrame({"text": [f"Review {i}: the soup was fine" for i in range(400)]})
print("ready")
"""
BLOCKING = """\
out = df.head(30).deluge.complete(
    "sim-browser", prompt="[[sim:echo]]{text}", max_requests_per_minute=300,
    max_tokens=32, cache=False,
)
print("complete", out["response"].notna().sum())
"""
SUBMIT = """\
job = df.deluge.submit(
    "sim-browser", prompt="[[sim:echo]]{text}", max_requests_per_minute=120,
    max_tokens=32, cache=False,
)
"""
RATE = """\
lim = job.stats.limiter
print("limit", lim.configured_requests_per_minute, lim.max_requests_per_minute)
before = sim.stats()["ok"] + sim.stats()["in_flight"]
time.sleep(5)
print("rate", (sim.stats()["ok"] + sim.stats()["in_flight"] - before) / 5 * 60)
"""
RESULT = """\
result = job.result(timeout=30)
cancelled = result["error"].fillna("").str.startswith("cancelled").sum()
print("result", job.stats.state, result["response"].notna().sum(), cancelled)
"""
CELLS = [SETUP, BLOCKING, SUBMIT, RATE, RATE, RESULT]


def _require_browser() -> Any:
    required = os.environ.get("DELUGE_REQUIRE_BROWSER") == "1"
    problem = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        problem = "playwright is not installed"
    if problem is None and not CHROMIUM.exists():
        problem = f"{CHROMIUM} is missing; run scripts/setup_browser.sh"
    if problem is not None:
        if required:
            pytest.fail(problem)
        pytest.skip(problem)
    return sync_playwright


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _write_notebook(path: Path) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.cells = [nbformat.v4.new_code_cell(source) for source in CELLS]
    nbformat.write(nb, path)


def _kernelspec(root: Path) -> Path:
    """A ``python3`` kernelspec that runs this interpreter."""
    spec = root / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "Python 3", "language": "python"})
    )
    return root / "jupyter"


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[str]:
    """JupyterLab on 127.0.0.1, serving ``tmp_path / "work"``; yields its URL."""
    work = tmp_path / "work"
    work.mkdir()
    _write_notebook(work / "panel.ipynb")
    port = _free_port()
    env = {
        **os.environ,
        "DELUGE_JUPYTER_PORT": str(port),
        "JUPYTERLAB_GALATA_ROOT_DIR": str(work),
        "JUPYTER_PATH": str(_kernelspec(tmp_path)),
        "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "JUPYTER_PLATFORM_DIRS": "1",
        "IPYTHONDIR": str(tmp_path / "ipython"),
        "DELUGE_NB_CACHE": "off",
    }
    log = (tmp_path / "jupyter.log").open("w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            "--config",
            str(HERE / "jupyter_server_config.py"),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/status", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    raise RuntimeError(
                        "JupyterLab did not start:\n"
                        + (tmp_path / "jupyter.log").read_text()[-3000:]
                    ) from None
                time.sleep(0.3)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)
        log.close()


@pytest.fixture
def page(lab: str) -> Iterator[Any]:
    sync_playwright = _require_browser()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 1000})
            page = context.new_page()
            page.set_default_timeout(30_000)
            page.goto(f"{lab}/lab/tree/panel.ipynb")
            page.locator(".jp-Notebook .jp-Cell").nth(len(CELLS) - 1).wait_for()
            page.wait_for_function(KERNEL_IDLE, timeout=60_000)
            yield page
        finally:
            browser.close()


# -- driving the notebook -----------------------------------------------------


def cell(page: Any, index: int) -> Any:
    return page.locator(".jp-Notebook .jp-Cell").nth(index)


# JupyterLab's own objects (exposed by the galata server config): running
# cells through its commands does not depend on where focus happens to be.
KERNEL_IDLE = """() => {
    const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
    const kernel = panel && panel.sessionContext && panel.sessionContext.session
        && panel.sessionContext.session.kernel;
    return Boolean(kernel) && kernel.status === "idle";
}"""
RUN_CELL = """(index) => {
    const panel = window.jupyterapp.shell.currentWidget;
    panel.content.activeCellIndex = index;
    window.jupyterapp.commands.execute("notebook:run-cell");  // not awaited
}"""


def run_cell(page: Any, index: int) -> None:
    """Run a cell without waiting for it to finish, only for it to start.

    A quick cell may show ``[*]`` for too short a time to be seen, so
    "started" is any change of its prompt.
    """
    prompt = cell(page, index).locator(".jp-InputPrompt")
    before = prompt.inner_text()
    page.evaluate(RUN_CELL, index)
    page.wait_for_function(
        "([el, before]) => el.textContent !== before",
        arg=[prompt.element_handle(), before],
        timeout=10_000,
    )


def wait_idle(page: Any, index: int, timeout_ms: int = 60_000) -> None:
    prompt = cell(page, index).locator(".jp-InputPrompt")
    page.wait_for_function(
        "el => /\\[\\d+\\]/.test(el.textContent)",
        arg=prompt.element_handle(),
        timeout=timeout_ms,
    )


def output_text(page: Any, index: int) -> str:
    return str(cell(page, index).locator(".jp-OutputArea").inner_text())


def panel(page: Any, index: int) -> Any:
    return cell(page, index).locator(".widget-vbox").first


def note(page: Any, index: int) -> Any:
    return panel(page, index).get_by_text("holds the kernel")


def rows_label(page: Any, index: int) -> str:
    labels = panel(page, index).locator(".widget-label").all_inner_texts()
    return next((t for t in labels if " rows" in t), "")


def rows_done(page: Any, index: int) -> int:
    match = re.match(r"(\d+) / \d+ rows", rows_label(page, index))
    return int(match.group(1)) if match else -1


def slider_handle(page: Any, index: int, name: str) -> Any:
    slider = panel(page, index).locator(".widget-slider").filter(has_text=name)
    return slider.locator(".noUi-handle")


def slider_readout(page: Any, index: int, name: str) -> str:
    slider = panel(page, index).locator(".widget-slider").filter(has_text=name)
    return str(slider.locator(".widget-readout").inner_text()).strip()


def printed(page: Any, index: int, key: str) -> list[str]:
    for line in output_text(page, index).splitlines():
        if line.startswith(key + " "):
            return line.split()[1:]
    raise AssertionError(f"no {key!r} line in cell {index}: {output_text(page, index)}")


def to_number(label: str) -> float:
    scale = {"k": 1e3, "M": 1e6}.get(label[-1:], 1.0)
    return float(label.rstrip("kM")) * scale


# -- the test ---------------------------------------------------------------------


def test_panel_in_jupyterlab(page: Any) -> None:
    run_cell(page, 0)
    wait_idle(page, 0)
    assert "ready" in output_text(page, 0)

    # A blocking complete(): the gauges move while the cell runs, and the
    # panel says the controls wait for the cell to end.
    run_cell(page, 1)
    panel(page, 1).wait_for()
    seen: set[int] = set()
    note_seen = False
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        seen.add(rows_done(page, 1))
        if not note_seen and note(page, 1).is_visible():
            note_seen = True
            # A slider move now waits in the kernel's queue behind this cell.
            slider_handle(page, 1, "requests/min").focus()
            page.keyboard.press("ArrowRight")
            assert slider_readout(page, 1, "requests/min") == "500"
        if "complete 30" in output_text(page, 1):
            break
        time.sleep(0.2)
    assert "complete 30" in output_text(page, 1)
    assert len({n for n in seen if 0 < n < 30}) >= 2, seen
    assert note_seen
    assert rows_label(page, 1).startswith("30 / 30 rows")
    # The move reached the kernel only after the job had ended, so the
    # finished panel put the slider back to the setting the job ran at.
    page.wait_for_timeout(1000)
    assert slider_readout(page, 1, "requests/min") == "300"

    # A submit() job: the cell ends at once and the panel stays live.
    run_cell(page, 2)
    wait_idle(page, 2, timeout_ms=15_000)
    panel(page, 2).wait_for()
    deadline = time.monotonic() + 20
    while rows_done(page, 2) < 4 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert rows_done(page, 2) >= 4
    assert slider_readout(page, 2, "requests/min") == "120"

    run_cell(page, 3)  # the rate before the slider moves
    wait_idle(page, 3)
    assert printed(page, 3, "limit") == ["120.0", "120.0"]
    assert float(printed(page, 3, "rate")[0]) < 160

    # Move requests/min up three stops with the keyboard, as a person can.
    handle = slider_handle(page, 2, "requests/min")
    handle.focus()
    for _ in range(3):
        page.keyboard.press("ArrowRight")
    page.wait_for_timeout(300)
    chosen = slider_readout(page, 2, "requests/min")
    assert to_number(chosen) > 120

    run_cell(page, 4)  # the rate after: the limiter follows the slider
    wait_idle(page, 4)
    limit = [float(v) for v in printed(page, 4, "limit")]
    assert limit == [to_number(chosen), to_number(chosen)]
    assert float(printed(page, 4, "rate")[0]) > 0.8 * to_number(chosen)

    note(page, 2).wait_for(state="hidden")  # no cell holds the kernel now
    SCREENSHOT.parent.mkdir(exist_ok=True)
    panel(page, 2).screenshot(path=str(SCREENSHOT))

    # Stop: the job ends within about a second and keeps its finished rows.
    panel(page, 2).get_by_role("button", name="Stop").click()
    page.wait_for_timeout(1500)
    assert "stopped" in panel(page, 2).inner_text()
    run_cell(page, 5)
    wait_idle(page, 5)
    state, finished, cancelled = printed(page, 5, "result")
    assert state == "stopped"
    assert 0 < int(finished) < 400
    assert int(finished) + int(cancelled) == 400
