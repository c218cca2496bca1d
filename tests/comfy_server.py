"""A real ComfyUI server with this pack loaded, shared by the workflow and web-extension tests.

The session fixture :func:`comfy_server` lays out a temporary ComfyUI base directory
(:func:`server_models.lay_out_models`: this repo symlinked as ``custom_nodes/ComfyUI-ReHyAt``, tiny
checkpoints in ComfyUI's model folders, an offline Hugging Face cache), then starts the provisioned
ComfyUI as a subprocess::

    python main.py --cpu --listen 127.0.0.1 --port <free> --base-directory <tmp> ...

with ``HF_HUB_OFFLINE=1`` and ``HF_HOME`` pointing at the laid-out cache. It waits until the server
answers, and stops it (terminate, then kill) at the end of the session. :class:`ComfyServer` is a
small HTTP/websocket client: ``object_info()``, ``run(prompt)`` (POST /prompt, follow the websocket
until the prompt finishes, read /history), ``get``/``post`` for other routes, ``log_text()``.

Use it from a test module with ``from comfy_server import comfy_server_fixture  # noqa: F401``
(the fixture's name is ``comfy_server``).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from comfy_support import ENV_REQUIRE, SKIP_REASON, _must_require, comfyui_dir

START_TIMEOUT_S = 180.0
PROMPT_TIMEOUT_S = 240.0


class ComfyServerError(RuntimeError):
    """The server refused a prompt, a prompt failed, or the server died; the message says why."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class PromptResult:
    """What one finished prompt produced."""

    prompt_id: str
    history: dict[str, Any]
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def outputs(self) -> dict[str, Any]:
        """UI outputs per node id (``images``, ``text`` …), as /history reports them."""
        return self.history.get("outputs", {})

    def events_of(self, kind: str) -> list[dict[str, Any]]:
        """The ``data`` of every websocket message of type ``kind`` seen while the prompt ran."""
        return [e["data"] for e in self.events if e.get("type") == kind]


@dataclass
class ComfyServer:
    """A running ComfyUI server process and a client for it."""

    url: str
    base_dir: Path
    process: subprocess.Popen
    log_path: Path
    _object_info: dict[str, Any] | None = None

    # -- plain HTTP -------------------------------------------------------------------------------
    def get(self, route: str, timeout: float = 60.0) -> Any:
        """GET ``route`` and decode its JSON."""
        with urllib.request.urlopen(self.url + route, timeout=timeout) as response:
            return json.loads(response.read())

    def get_bytes(self, route: str, timeout: float = 60.0) -> bytes:
        """GET ``route`` as raw bytes."""
        with urllib.request.urlopen(self.url + route, timeout=timeout) as response:
            return response.read()

    def post(self, route: str, payload: Any, timeout: float = 60.0) -> Any:
        """POST JSON to ``route``; an HTTP error raises :class:`ComfyServerError` with the body."""
        request = urllib.request.Request(self.url + route, data=json.dumps(payload).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise ComfyServerError(f"POST {route} → {exc.code}: {detail}") from exc
        return json.loads(body) if body else None

    def object_info(self) -> dict[str, Any]:
        """``GET /object_info`` (cached: node definitions do not change while the server runs)."""
        if self._object_info is None:
            self._object_info = self.get("/object_info")
        return self._object_info

    def log_text(self, tail: int = 12000) -> str:
        """The last ``tail`` characters of the server's combined stdout/stderr."""
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    # -- prompts ----------------------------------------------------------------------------------
    def run(self, prompt: dict[str, Any], timeout: float = PROMPT_TIMEOUT_S) -> PromptResult:
        """Queue an API-format ``prompt``, wait for it to finish, return its history and events.

        Raises :class:`ComfyServerError` with the server's node errors or the failing node's
        exception message and traceback.
        """
        return asyncio.run(self._run(prompt, timeout))

    async def _run(self, prompt: dict[str, Any], timeout: float) -> PromptResult:
        import aiohttp  # a ComfyUI requirement: present wherever the server runs

        client_id = uuid.uuid4().hex
        events: list[dict[str, Any]] = []
        ws_url = self.url.replace("http://", "ws://") + f"/ws?clientId={client_id}"
        async with aiohttp.ClientSession() as session, session.ws_connect(ws_url, max_msg_size=0) as ws:
            async with session.post(self.url + "/prompt",
                                    json={"prompt": prompt, "client_id": client_id}) as response:
                body = await response.json(content_type=None)
                if response.status != 200:
                    raise ComfyServerError(f"POST /prompt refused the graph: {json.dumps(body, indent=1)}")
            prompt_id = body["prompt_id"]
            deadline = time.monotonic() + timeout
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ComfyServerError(f"prompt {prompt_id} did not finish in {timeout:.0f} s")
                if self.process.poll() is not None:
                    raise ComfyServerError(f"the server died:\n{self.log_text()}")
                try:
                    message = await ws.receive(timeout=min(remaining, 5.0))
                except asyncio.TimeoutError:
                    continue
                if message.type != aiohttp.WSMsgType.TEXT:
                    if message.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                        raise ComfyServerError(f"websocket closed while prompt {prompt_id} ran")
                    continue  # binary preview frames
                event = json.loads(message.data)
                events.append(event)
                data = event.get("data", {})
                if data.get("prompt_id") not in (None, prompt_id):
                    continue
                kind = event.get("type")
                if kind == "execution_error":
                    raise ComfyServerError(
                        f"node {data.get('node_id')} ({data.get('node_type')}) failed: "
                        f"{data.get('exception_type')}: {data.get('exception_message')}\n"
                        + "".join(data.get("traceback", [])))
                if kind == "execution_interrupted":
                    raise ComfyServerError(f"prompt {prompt_id} was interrupted")
                # ComfyUI stores the history entry, then sends "executing" with node None (main.py);
                # "execution_success" comes before the history exists.
                if kind == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
                    break
        history = self._history(prompt_id)
        status = history.get("status", {})
        if status.get("status_str") != "success":
            raise ComfyServerError(f"prompt {prompt_id} ended with status {status}")
        return PromptResult(prompt_id=prompt_id, history=history, events=events)

    def _history(self, prompt_id: str, timeout: float = 30.0) -> dict[str, Any]:
        """The /history entry of a finished prompt (polled briefly: it is written just before the end
        message, but a proxy or a newer ComfyUI may order them differently)."""
        deadline = time.monotonic() + timeout
        while True:
            entry = self.get(f"/history/{prompt_id}").get(prompt_id, {})
            if entry.get("status", {}).get("completed") is not None or time.monotonic() > deadline:
                return entry
            time.sleep(0.2)

    def output_file(self, image: dict[str, str]) -> Path:
        """The file behind one ``{"filename", "subfolder", "type"}`` entry of a UI output."""
        folder = {"output": "output", "temp": "temp", "input": "input"}[image["type"]]
        return self.base_dir / folder / image.get("subfolder", "") / image["filename"]

    # -- lifecycle --------------------------------------------------------------------------------
    def stop(self) -> None:
        """Terminate the server (kill it if it does not exit within 20 s)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=20)


def _frontend_settings(base: Path) -> None:
    """User settings that keep the frontend from opening first-run dialogs over the canvas."""
    settings = {
        "Comfy.TutorialCompleted": True,
        "Comfy.Validation.Workflows": True,
        "Comfy.InstalledVersion": "1.32.9",
        "Comfy.Release.Version": "1.32.9",
    }
    path = base / "user" / "default" / "comfy.settings.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings))


def server_command(comfy_root: Path, base: Path, port: int) -> list[str]:
    """The ``main.py`` command line of the test server."""
    return [
        sys.executable, str(comfy_root / "main.py"), "--cpu", "--listen", "127.0.0.1", "--port", str(port),
        "--base-directory", str(base), "--disable-auto-launch", "--disable-api-nodes",
        "--database-url", "sqlite:///:memory:", "--preview-method", "none",
    ]


def start_server(comfy_root: Path, base: Path) -> ComfyServer:
    """Start ComfyUI on a free port with ``base`` as its base directory; wait until it answers."""
    _frontend_settings(base)
    port = free_port()
    log_path = base / "server.log"
    # One intra-op thread: the tiny graphs gain nothing from more, and on a shared 2-core CI machine
    # oversubscribed OpenMP threads made a VAE decode ~6× slower than a single thread.
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(base / "hf_home"),
               HF_HUB_DISABLE_TELEMETRY="1", PYTHONUNBUFFERED="1", DO_NOT_TRACK="1",
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("HF_HUB_CACHE", None)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(server_command(comfy_root, base, port), cwd=comfy_root, env=env,
                                   stdout=log, stderr=subprocess.STDOUT)
    server = ComfyServer(url=f"http://127.0.0.1:{port}", base_dir=base, process=process, log_path=log_path)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if process.poll() is not None:
            raise ComfyServerError(f"ComfyUI exited with code {process.returncode}:\n{server.log_text()}")
        try:
            server.get("/system_stats", timeout=5)
            return server
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise ComfyServerError(
                f"ComfyUI did not answer within {START_TIMEOUT_S:.0f} s:\n{server.log_text()}")
        time.sleep(0.5)


def _require_comfyui() -> Path:
    """The provisioned ComfyUI directory, or skip (fail under ``REHYAT_REQUIRE_COMFYUI=1``)."""
    root = comfyui_dir()
    if root is None:
        if _must_require():
            pytest.fail(f"{ENV_REQUIRE} is set but {SKIP_REASON}")
        pytest.skip(SKIP_REASON)
    return root


_SHARED: dict[str, ComfyServer] = {}


@pytest.fixture(scope="session", name="comfy_server")
def comfy_server_fixture(tmp_path_factory: pytest.TempPathFactory):
    """Session fixture: a running real ComfyUI server with this pack and the test models tree.

    Every test module imports this fixture; the server itself is started once per session (shared
    through a module-level cache) and stopped when the session ends.
    """
    from server_models import lay_out_models

    if "server" not in _SHARED:
        root = _require_comfyui()
        base = tmp_path_factory.mktemp("comfyui_base")
        lay_out_models(base)
        _SHARED["server"] = start_server(root, base)
    try:
        yield _SHARED["server"]
    finally:
        server = _SHARED.pop("server", None)
        if server is not None:
            server.stop()
