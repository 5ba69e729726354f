"""One real vLLM-CPU OpenAI server in its own process group, bound to 127.0.0.1 on a free port."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import httpx

from tests.engine.flavours import Flavour
from tests.engine.provision import STOCK_SAMPLER_ENV, vllm_python, vllm_test_plugins

SERVED_MODEL_NAME = "tiny-llama"  # keeps machine paths out of `model_name` labels and captured fixtures
# ~60 s on an idle 2-core machine; much more when it is shared (over 300 s seen at a load average of 20).
STARTUP_TIMEOUT_SECONDS = float(os.environ.get("SPEC_SIDECAR_ENGINE_START_TIMEOUT", "300"))
STOP_TIMEOUT_SECONDS = 30.0
LOG_TAIL_LINES = 60
# The CPU backend's defaults that break or starve a 2-core machine (docs/engines.md): `all` crashes the binding.
ENGINE_ENV = {
    "VLLM_CPU_OMP_THREADS_BIND": "0-1",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}


class EngineStartError(RuntimeError):
    """The server exited or did not become ready in time; the message carries its log tail."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


class Engine:
    """A started server: `.url`, `.model`, `.log_path`, `.stop()`; also a context manager."""

    def __init__(self, flavour: Flavour, log_dir: Path | None = None, port: int | None = None) -> None:
        self.flavour = flavour
        self.model = SERVED_MODEL_NAME
        # A given port: a restart in another configuration at the same URL, as a watcher configured once sees it.
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        directory = log_dir or Path(tempfile.mkdtemp(prefix="vllm-engine-"))
        directory.mkdir(parents=True, exist_ok=True)
        self.log_path = directory / f"vllm-{flavour.name.replace(':', '-')}-{self.port}.log"
        self.startup_seconds: float | None = None
        self._process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return [
            str(vllm_python()),
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(self.flavour.model_dir),
            "--served-model-name",
            self.model,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dtype",
            "float32",
            "--max-model-len",
            "1024",
            "--seed",
            "0",
            *self.flavour.server_args(),
        ]

    def start(self, timeout: float = STARTUP_TIMEOUT_SECONDS) -> Engine:
        env = {**os.environ, **ENGINE_ENV}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # would drop the `_created` samples the fixtures should show
        if os.environ.get(STOCK_SAMPLER_ENV) != "1":
            # vLLM-CPU 0.32 ignores the temperature of speculative requests; the test-only plugin there fixes
            # it (docs/model-family.md). vLLM finds it through its entry point on this path in every process.
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(vllm_test_plugins()), env.get("PYTHONPATH")]))
        began = time.monotonic()
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        try:
            self._wait_ready(began + timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        return self

    def _wait_ready(self, deadline: float) -> None:
        assert self._process is not None
        with httpx.Client(timeout=5.0) as client:
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    raise EngineStartError(self._failure(f"exited with code {self._process.returncode}"))
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{self.url}/v1/models").status_code == 200:
                        return
                time.sleep(0.5)
        raise EngineStartError(self._failure("was not ready in time"))

    def _failure(self, what: str) -> str:
        return f"vLLM ({self.flavour.name}) {what}; log {self.log_path}, tail:\n{log_tail(self.log_path)}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def stop(self) -> None:
        """SIGTERM to the server's own process group (its engine core is a child), SIGKILL if it lingers."""
        process = self._process
        if process is None:
            return
        for sig, grace in ((signal.SIGTERM, STOP_TIMEOUT_SECONDS), (signal.SIGKILL, 10.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
            try:
                process.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
        self._reap_group(process.pid)
        self._process = None

    @staticmethod
    def _reap_group(pgid: int) -> None:
        # The leader can exit before its children; whatever is left of the group gets SIGKILL.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)

    def __enter__(self) -> Engine:
        return self if self.running else self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
