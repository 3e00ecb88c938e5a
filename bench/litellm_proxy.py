"""LiteLLM proxy as the reference gateway, installed into a throwaway virtualenv.

It is never a project dependency: the first run creates ``<cache>/litellm-venv`` with
``uv pip install 'litellm[proxy]==VERSION'`` (PyPI only) and later runs reuse it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from tests.support.servers import free_port

__all__ = ["LITELLM_VERSION", "LiteLLMProxy", "ensure_litellm"]

LITELLM_VERSION = "1.108.7"
MASTER_KEY = "sk-bench-master"


def ensure_litellm(cache: Path) -> Path:
    """The ``litellm`` executable of a venv holding the pinned version (created if needed)."""
    venv = cache / f"litellm-{LITELLM_VERSION}"
    executable = venv / "bin" / "litellm"
    if executable.exists():
        return executable
    # `uv run` tells its children where uv is; else look on PATH.
    found = os.environ.get("UV") or shutil.which("uv")
    if not found:
        raise RuntimeError("uv is needed to build LiteLLM's throwaway virtualenv")
    uv = [found]
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never", "VIRTUAL_ENV": str(venv)}
    subprocess.run([*uv, "venv", "-q", "-p", "3.12", str(venv)], check=True, env=env)  # noqa: S603
    subprocess.run(  # noqa: S603 - fixed argv
        [*uv, "pip", "install", "-q", f"litellm[proxy]=={LITELLM_VERSION}"], check=True, env=env
    )
    return executable


@dataclass
class LiteLLMProxy:
    """A running LiteLLM proxy pointed at one upstream base URL."""

    proc: subprocess.Popen[bytes]
    port: int
    workers: int

    @classmethod
    def start(
        cls, executable: Path, workdir: Path, *, upstream: str, model: str, workers: int
    ) -> LiteLLMProxy:
        workdir.mkdir(parents=True, exist_ok=True)
        config = workdir / "litellm.yaml"
        config.write_text(
            "model_list:\n"
            f"  - model_name: {model}\n"
            "    litellm_params:\n"
            f"      model: openai/{model}\n"
            f"      api_base: {upstream}\n"
            "      api_key: sk-upstream\n"
            "litellm_settings:\n"
            "  telemetry: false\n"
            "  drop_params: true\n"
        )
        port = free_port()
        log = (workdir / f"litellm-{workers}.log").open("ab")
        env = {
            **os.environ,
            "LITELLM_MASTER_KEY": MASTER_KEY,
            "LITELLM_LOG": "ERROR",
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "NO_DOCS": "True",
        }
        proc = subprocess.Popen(  # noqa: S603 - fixed argv
            [
                str(executable),
                "--config",
                str(config),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--num_workers",
                str(workers),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=workdir,
            start_new_session=True,
        )
        proxy = cls(proc, port, workers)
        proxy._wait_ready()
        return proxy

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"litellm exited with {self.proc.returncode}")
            try:
                if (
                    httpx.get(
                        f"http://127.0.0.1:{self.port}/health/liveliness", timeout=2
                    ).status_code
                    == 200
                ):
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise TimeoutError("litellm did not become ready")

    def stop(self) -> None:
        os.killpg(self.proc.pid, 15)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait(10)
