"""A fast local upstream: nginx serving one fixed chat completion and one fixed SSE stream.

The gateway and LiteLLM are pointed at ``/json/api/v1`` (non-streamed answers) or
``/sse/api/v1`` (streamed answers); nginx's cost per request is a small fraction of
either, so differences measured above it belong to the gateways.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support.servers import free_port, wait_for_port

__all__ = ["NginxUpstream"]

MODEL = "openai/gpt-4o-mini"
_CREATED = 1_700_000_000


def _completion() -> bytes:
    return json.dumps(
        {
            "id": "gen-bench",
            "object": "chat.completion",
            "created": _CREATED,
            "model": MODEL,
            "provider": "OpenAI",
            "system_fingerprint": None,
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "logprobs": None,
                    "message": {
                        "role": "assistant",
                        "content": "Hello there, nice to meet you!",
                        "refusal": None,
                    },
                }
            ],
            "usage": {
                "prompt_tokens": 14,
                "completion_tokens": 8,
                "total_tokens": 22,
                "cost": 0.0000069,
            },
        }
    ).encode()


def _stream(pieces: int = 8) -> bytes:
    def chunk(delta: dict[str, object], finish: str | None = None, usage: object = None) -> bytes:
        body: dict[str, object] = {
            "id": "gen-bench",
            "object": "chat.completion.chunk",
            "created": _CREATED,
            "model": MODEL,
            "provider": "OpenAI",
            "system_fingerprint": None,
            "choices": []
            if usage
            else [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        }
        if usage:
            body["usage"] = usage
        return b"data: " + json.dumps(body).encode() + b"\n\n"

    out = [b": OPENROUTER PROCESSING\n\n", chunk({"role": "assistant", "content": ""})]
    out += [chunk({"content": f"word{i} "}) for i in range(pieces)]
    out.append(chunk({}, "stop"))
    out.append(
        chunk(
            {},
            usage={
                "prompt_tokens": 14,
                "completion_tokens": pieces,
                "total_tokens": 14 + pieces,
                "cost": 0.0000069,
            },
        )
    )
    out.append(b"data: [DONE]\n\n")
    return b"".join(out)


_MODELS = json.dumps(
    {
        "data": [
            {
                "id": MODEL,
                "name": "GPT-4o mini",
                "created": _CREATED,
                "context_length": 128000,
                "pricing": {"prompt": "0.00000015", "completion": "0.0000006"},
                "supported_parameters": ["tools", "temperature", "seed"],
            }
        ]
    }
).encode()

_CONF = """
{user}
worker_processes 1;
error_log {root}/error.log warn;
pid {root}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {root}/tmp;
  keepalive_requests 100000;
  server {{
    listen 127.0.0.1:{port};
    root {root}/www;
    # A static file answers POST with 405: answer 405 at once and let error_page serve the
    # file (error_page redirects as GET).
    location = /json/api/v1/chat/completions {{ error_page 405 =200 /completion.json; return 405; }}
    location = /sse/api/v1/chat/completions {{ error_page 405 =200 /stream.txt; return 405; }}
    location ~ ^/(json|sse)/api/v1/models$ {{ error_page 405 =200 /models.json; return 405; }}
    location = /completion.json {{ internal; default_type application/json; }}
    location = /stream.txt {{ internal; default_type text/event-stream; }}
    location = /models.json {{ internal; default_type application/json; }}
  }}
}}
"""


@dataclass
class NginxUpstream:
    """nginx on a free loopback port; stop it with :meth:`stop`."""

    root: Path
    port: int
    proc: subprocess.Popen[bytes]

    @classmethod
    def start(cls, root: Path) -> NginxUpstream:
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        if not Path(binary).exists():
            raise RuntimeError(
                "nginx is needed for the benchmark upstream: apt-get install nginx-light"
            )
        (root / "www").mkdir(parents=True, exist_ok=True)
        (root / "tmp").mkdir(exist_ok=True)
        (root / "www" / "completion.json").write_bytes(_completion())
        (root / "www" / "stream.txt").write_bytes(_stream())
        (root / "www" / "models.json").write_bytes(_MODELS)
        port = free_port()
        conf = root / "nginx.conf"
        # As root, nginx's workers would drop to "nobody" and lose access to our temp dir.
        user = "user root;" if os.geteuid() == 0 else ""
        conf.write_text(_CONF.format(root=root, port=port, user=user))
        proc = subprocess.Popen(  # noqa: S603 - fixed argv
            [binary, "-c", str(conf), "-p", str(root), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        wait_for_port(port, proc=proc)
        return cls(root, port, proc)

    def base_url(self, *, stream: bool) -> str:
        return f"http://127.0.0.1:{self.port}/{'sse' if stream else 'json'}/api/v1"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        time.sleep(0.1)
