"""When does a widget event reach a kernel whose cell is still running?

The panel's sliders and buttons send ``comm_msg`` messages from the
frontend to the kernel. This probe measures, per ipykernel version, whether
such a message is handled while a cell waits (and so reaches a running
job) or only after the cell ends. It plays the frontend itself with
jupyter_client, so no browser is needed:

1. a cell creates an ``ipywidgets.IntSlider`` whose observer records when
   its value changes;
2. a second cell waits 3 s, either blocking on a ``threading.Event``
   (what ``complete()`` and ``job.result()`` do) or with a top-level
   ``await asyncio.sleep`` (what ``await acomplete()`` does);
3. 1 s into that wait the probe sends the slider update a frontend sends
   when the user drags it, then reports whether the observer ran before
   the wait ended.

Each version gets its own venv under ``--work`` (ipykernel and ipywidgets
only, from the package index). Usage::

    python benchmarks/kernel_events.py --versions 6.25.2,6.29.5,7.0.1,7.4.0
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from jupyter_client import BlockingKernelClient
from jupyter_client.connect import write_connection_file

SETUP = """
import asyncio, threading, time, ipywidgets
slider = ipywidgets.IntSlider(value=0)
changed_at = []
slider.observe(lambda change: changed_at.append(time.monotonic()), "value")
print(slider.model_id)
"""

WAITS = {
    "blocking": (
        "started = time.monotonic(); threading.Event().wait(3); "
        "ended = time.monotonic()"
    ),
    "await": (
        "started = time.monotonic(); await asyncio.sleep(3); ended = time.monotonic()"
    ),
}

REPORT = """
import json
print(json.dumps({
    "during_wait": bool(changed_at) and changed_at[0] < ended,
    "after_start_s": round(changed_at[0] - started, 2) if changed_at else None,
}))
"""


def venv_for(version: str, work: Path) -> Path:
    venv = work / f"ipykernel-{version}"
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "-q",
                f"ipykernel=={version}",
                "ipywidgets",
            ],
            check=True,
        )
    return python


def run_cell(client: BlockingKernelClient, code: str) -> str:
    """Execute code and return its stdout; raise on an error reply."""
    out: list[str] = []

    def collect(msg: dict) -> None:
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])

    reply = client.execute_interactive(code, timeout=60, output_hook=collect)
    if reply["content"]["status"] != "ok":
        raise RuntimeError(f"cell failed: {reply['content']}")
    return "".join(out)


def probe(python: Path, wait: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        connection = Path(tmp) / "kernel.json"
        write_connection_file(str(connection), ip="127.0.0.1")
        kernel = subprocess.Popen(
            [str(python), "-m", "ipykernel_launcher", "-f", str(connection)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = BlockingKernelClient(connection_file=str(connection))
        client.load_connection_file()
        client.start_channels()
        try:
            client.wait_for_ready(timeout=60)
            model_id = run_cell(client, SETUP).strip().splitlines()[-1]

            msg_id = client.execute(WAITS[wait])
            time.sleep(1.0)
            update = client.session.msg(
                "comm_msg",
                {
                    "comm_id": model_id,
                    "data": {
                        "method": "update",
                        "state": {"value": 5},
                        "buffer_paths": [],
                    },
                },
            )
            client.shell_channel.send(update)
            while True:
                reply = client.get_shell_msg(timeout=30)
                if reply["parent_header"].get("msg_id") == msg_id:
                    break
            return json.loads(run_cell(client, REPORT).strip().splitlines()[-1])
        finally:
            client.stop_channels()
            kernel.kill()
            kernel.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", default="6.25.2,6.29.5,7.0.1,7.4.0")
    parser.add_argument(
        "--work", type=Path, default=Path(tempfile.gettempdir()) / "deluge-kernels"
    )
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    print("| ipykernel | wait in the cell | slider event handled | s after start |")
    print("|---|---|---|---|")
    for version in args.versions.split(","):
        python = venv_for(version, args.work)
        for wait in WAITS:
            result = probe(python, wait)
            when = "during the wait" if result["during_wait"] else "after the cell"
            print(f"| {version} | {wait} | {when} | {result['after_start_s']} |")


if __name__ == "__main__":
    main()
