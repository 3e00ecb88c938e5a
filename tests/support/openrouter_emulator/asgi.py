"""The emulator as a raw ASGI application."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Iterable
from typing import Any, Final

import orjson

from tests.support.openrouter_emulator.answers import (
    _DONE,
    _JSON_HEADER,
    _PROCESSING,
    _SSE_HEADERS,
    _Answer,
    _answer,
    _BadRequestError,
    _error_body,
    _frame,
    _frame_multiline,
    _stream_payloads,
    _usage,
    _validate,
)
from tests.support.openrouter_emulator.model import (
    CallRecord,
    Fault,
    ModelSpec,
    OpenRouterEmulator,
    Receive,
    Scope,
    Send,
)

# ----------------------------------------------------------------------------------- ASGI


def _paths(suffix: str) -> frozenset[str]:
    return frozenset(
        f"{base}{suffix}{slash}" for base in ("/api/v1", "/v1", "") for slash in ("", "/")
    )


_CHAT_PATHS: Final = _paths("/chat/completions")
_MODELS_PATHS: Final = _paths("/models")
_CONTROL_PREFIX: Final = "/_emulator/"


class _ClientGoneError(Exception):
    """The client disconnected while the request body was being read."""


async def _read_body(receive: Receive) -> bytes:
    message = await receive()
    if message["type"] == "http.disconnect":
        raise _ClientGoneError
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body
    parts = [body]
    while message.get("more_body", False):
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGoneError
        parts.append(message.get("body", b""))
    return b"".join(parts)


async def _send_json(
    send: Send, status: int, payload: bytes, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [_JSON_HEADER, (b"content-length", str(len(payload)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": payload})


class _Watch:
    """Notices the client going away (``http.disconnect``) or the server stopping.

    Only handlers that wait (delays, slow streams, hangs) pay for the watching task.
    """

    __slots__ = ("_app", "_task", "disconnected", "stopped")

    def __init__(self, app: EmulatorApp, receive: Receive) -> None:
        self._app = app
        self.disconnected = False
        self.stopped = asyncio.Event()
        if app.closing:
            self.stopped.set()
        app.watches.add(self)
        self._task = asyncio.get_running_loop().create_task(self._watch(receive))

    async def _watch(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.disconnected = True
        self.stopped.set()

    async def sleep(self, seconds: float) -> bool:
        """Wait ``seconds``; ``True`` if the client left or the server stopped meanwhile."""
        if seconds <= 0 or self.stopped.is_set():
            return self.stopped.is_set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self.stopped.wait()
        return self.stopped.is_set()

    def close(self) -> None:
        self._task.cancel()
        self._app.watches.discard(self)


class EmulatorApp:
    """The ASGI application over an :class:`OpenRouterEmulator`; one per server."""

    def __init__(self, emulator: OpenRouterEmulator) -> None:
        self.emulator = emulator
        self.closing = False
        self.watches: set[_Watch] = set()

    def shutdown(self) -> None:
        """Wake every waiting handler so the server can stop; call on the server's loop."""
        self.closing = True
        for watch in list(self.watches):
            watch.stopped.set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        if path.startswith(_CONTROL_PREFIX):
            with contextlib.suppress(_ClientGoneError):
                await self._control(scope["method"], path, receive, send)
            return
        headers: dict[str, str] = {}
        for raw_name, raw_value in scope["headers"]:
            name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        call = CallRecord(scope["method"], path, headers, None, time.time())
        self.emulator.record(call)
        try:
            if path in _CHAT_PATHS:
                await self._chat(call, receive, send)
            elif path in _MODELS_PATHS and call.method == "GET" and self.emulator.models_status:
                await self._fail(call, send, self.emulator.models_status, None)
            elif path in _MODELS_PATHS and call.method == "GET":
                call.status = 200
                await _send_json(send, 200, self.emulator.models_json)
                call.completed = True
            else:
                call.status = 404 if path not in _MODELS_PATHS else 405
                await _send_json(send, call.status, _error_body(call.status, None))
                call.completed = True
        except _ClientGoneError:
            call.disconnected = True
        finally:
            call.mark_finished()

    @staticmethod
    async def _lifespan(receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _fail(self, call: CallRecord, send: Send, status: int, message: str | None) -> None:
        call.status = status
        await _send_json(send, status, _error_body(status, message))
        call.completed = True

    async def _chat(self, call: CallRecord, receive: Receive, send: Send) -> None:
        emulator = self.emulator
        if call.method != "POST":
            await self._fail(call, send, 405, None)
            return
        raw = await _read_body(receive)
        if emulator.api_key is not None and (
            call.headers.get("authorization") != f"Bearer {emulator.api_key}"
        ):
            await self._fail(call, send, 401, None)
            return
        try:
            call.body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            await self._fail(call, send, 400, "Request body is not valid JSON")
            return
        try:
            model_id, stream = _validate(call.body)
        except _BadRequestError as exc:
            await self._fail(call, send, 400, str(exc))
            return
        call.model, call.stream = model_id, stream
        fault = emulator.take_fault(model_id, stream)
        if fault is not None:
            call.fault = fault.kind
            if fault.kind == "status":
                await self._status_fault(call, send, fault)
                return
        model = emulator.models.get(model_id)
        if model is None:
            await self._fail(call, send, 404, f"Model {model_id} does not exist")
            return
        answer = _answer(call.body, emulator.reply)
        if stream:
            await self._stream(call, receive, send, answer=answer, model=model, fault=fault)
        else:
            await self._complete(call, receive, send, answer=answer, model=model, fault=fault)

    async def _status_fault(self, call: CallRecord, send: Send, fault: Fault) -> None:
        call.status = fault.status or 500
        headers = []
        if fault.retry_after is not None:
            value = fault.retry_after
            text = (
                str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
            )
            headers.append((b"retry-after", text.encode()))
        body = _error_body(call.status, fault.message, fault.metadata)
        await _send_json(send, call.status, body, headers)
        call.completed = True

    async def _wait_out(self, call: CallRecord, watch: _Watch, send: Send, seconds: float) -> bool:
        """Wait before answering (``inf``: until stopped); ``False`` if the call is over."""
        if seconds == float("inf"):
            await watch.stopped.wait()
        elif not await watch.sleep(seconds):
            return True
        if watch.disconnected:
            call.disconnected = True
        else:  # the server is stopping: answer rather than leave uvicorn to send its 500
            await self._fail(call, send, 503, "The emulator is shutting down")
        return False

    async def _complete(
        self,
        call: CallRecord,
        receive: Receive,
        send: Send,
        *,
        answer: _Answer,
        model: ModelSpec,
        fault: Fault | None,
    ) -> None:
        wait = 0.0
        if fault is not None and fault.kind == "delay":
            wait = fault.seconds
        elif fault is not None and fault.kind == "hang":
            wait = float("inf")
        if wait:
            watch = _Watch(self, receive)
            try:
                if not await self._wait_out(call, watch, send, wait):
                    return
            finally:
                watch.close()
        message: dict[str, Any] = {
            "role": "assistant",
            "content": answer.content,
            "refusal": None,
            "reasoning": None,
        }
        if answer.tool_call is not None:
            call_id, name, arguments = answer.tool_call
            message["tool_calls"] = [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": name, "arguments": arguments},
                }
            ]
        created = int(time.time())
        generation = f"gen-{created}-{os.urandom(10).hex()}"
        payload = orjson.dumps(
            {
                "id": generation,
                "provider": model.provider,
                "model": model.id,
                "object": "chat.completion",
                "created": created,
                "choices": [
                    {
                        "logprobs": None,
                        "finish_reason": answer.finish_reason,
                        "native_finish_reason": answer.finish_reason,
                        "index": 0,
                        "message": message,
                    }
                ],
                "system_fingerprint": None,
                "usage": _usage(answer, model, report_cost=self.emulator.report_cost),
            }
        )
        call.status = 200
        if fault is not None and fault.kind == "disconnect":
            # Promise a body, send none: uvicorn closes the connection when we return.
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [_JSON_HEADER, (b"content-length", str(len(payload)).encode())],
                }
            )
            return
        await _send_json(send, 200, payload, [(b"x-generation-id", generation.encode())])
        call.completed = True

    async def _stream(
        self,
        call: CallRecord,
        receive: Receive,
        send: Send,
        *,
        answer: _Answer,
        model: ModelSpec,
        fault: Fault | None,
    ) -> None:
        emulator = self.emulator
        created = int(time.time())
        generation = f"gen-{created}-{os.urandom(10).hex()}"
        prefix = (
            orjson.dumps(
                {
                    "id": generation,
                    "provider": model.provider,
                    "model": model.id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "system_fingerprint": None,
                }
            )[:-1]
            + b',"choices":'
        )
        options = call.body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        usage = _usage(answer, model, report_cost=emulator.report_cost) if include_usage else None
        payloads = _stream_payloads(answer, prefix, emulator.stream_chunks, usage)
        kind = fault.kind if fault is not None else None
        if fault is not None and kind in ("disconnect", "stream_error", "hang"):
            payloads = payloads[: fault.after_chunks]
        if fault is not None and kind == "stream_error":
            error = orjson.loads(_error_body(fault.status or 502, fault.message, fault.metadata))
            error_choice = b'[{"index":0,"delta":{"content":""},"finish_reason":"error"}]'
            payloads.append(
                prefix + error_choice + b',"error":' + orjson.dumps(error["error"]) + b"}"
            )
        frame = _frame_multiline if kind == "multiline" else _frame
        frames = [frame(payload) for payload in payloads]
        ending = _DONE if kind in (None, "delay", "multiline") else b""
        head = _PROCESSING if emulator.processing_comment else b""
        chunk_delay = emulator.chunk_delay
        wait = 0.0
        if fault is not None and kind == "delay":
            wait = fault.seconds
            chunk_delay = fault.chunk_delay if fault.chunk_delay is not None else chunk_delay
        start = {
            "type": "http.response.start",
            "status": 200,
            "headers": [*_SSE_HEADERS, (b"x-generation-id", generation.encode())],
        }

        if not wait and not chunk_delay and kind not in ("disconnect", "hang"):
            # Fast path, what benchmarks hit: one write, no watching task.
            call.status = 200
            await send(start)
            await send({"type": "http.response.body", "body": b"".join([head, *frames, ending])})
            call.chunks_sent, call.completed = len(frames), True
            return

        watch = _Watch(self, receive)
        try:
            if wait and not await self._wait_out(call, watch, send, wait):
                return
            call.status = 200
            await send(start)
            if head:
                await send({"type": "http.response.body", "body": head, "more_body": True})
            for data in frames:
                if await watch.sleep(chunk_delay):
                    break
                await send({"type": "http.response.body", "body": data, "more_body": True})
                call.chunks_sent += 1
            else:
                if kind == "hang":
                    await watch.stopped.wait()
                elif kind != "disconnect":
                    await send({"type": "http.response.body", "body": ending})
                    call.completed = True
            # Leaving without a final body makes uvicorn close the connection abruptly.
            call.disconnected = watch.disconnected and not call.completed
        finally:
            watch.close()

    async def _control(self, method: str, path: str, receive: Receive, send: Send) -> None:
        """``/_emulator/calls`` and ``/_emulator/faults``."""
        emulator = self.emulator
        resource = path[len(_CONTROL_PREFIX) :].rstrip("/")
        body = await _read_body(receive)
        if (resource, method) == ("calls", "GET"):
            calls = [call.to_dict() for call in emulator.calls]
            await _send_json(send, 200, orjson.dumps({"data": calls}))
        elif (resource, method) == ("calls", "DELETE"):
            await _send_json(send, 200, orjson.dumps({"cleared": emulator.clear_calls()}))
        elif (resource, method) == ("faults", "GET"):
            faults = [fault.to_dict() for fault in emulator.faults]
            await _send_json(send, 200, orjson.dumps({"data": faults}))
        elif (resource, method) == ("faults", "POST"):
            # One fault object, a list of them, or {"faults": [...]}.
            try:
                spec = orjson.loads(body)
                specs = spec if isinstance(spec, list) else spec.get("faults", [spec])
                parsed = [Fault.from_dict(item) for item in specs]  # all valid, or none added
            except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError) as exc:
                await _send_json(send, 400, _error_body(400, f"Invalid fault: {exc}"))
                return
            added = [emulator.add_fault(fault) for fault in parsed]
            await _send_json(send, 201, orjson.dumps({"data": [f.to_dict() for f in added]}))
        elif (resource, method) == ("faults", "DELETE"):
            emulator.clear_faults()
            await _send_json(send, 200, orjson.dumps({"cleared": True}))
        else:
            await _send_json(send, 404, _error_body(404, None))
