from __future__ import annotations

import pytest

from switchboard.common.errors import ErrorDetail
from switchboard.common.wire import (
    ChatRequest,
    CompletionFailed,
    CompletionFinished,
    FrameKind,
    KeyIdentity,
    TokenUsage,
    decode_frame,
    encode_frame,
)


def test_chunk_frame_carries_bytes_untouched() -> None:
    raw = b'{"id":"x","choices":[{"delta":{"content":"h\\u00e9"}}]}'
    frame = decode_frame(encode_frame(FrameKind.CHUNK, raw))
    assert frame.kind is FrameKind.CHUNK
    assert frame.body == raw


def test_model_frames_round_trip() -> None:
    finished = CompletionFinished(
        request_id="r1",
        served_model="m",
        provider="openrouter",
        usage=TokenUsage(prompt_tokens=3, completion_tokens=4, total_tokens=7),
        cost_usd=0.5,
        chunks=2,
    )
    frame = decode_frame(encode_frame(FrameKind.END, finished))
    assert frame.kind is FrameKind.END
    assert CompletionFinished.model_validate_json(frame.body) == finished

    failed = CompletionFailed(
        request_id="r1",
        status=429,
        retry_after=2.0,
        error=ErrorDetail(message="slow down", type="rate_limit_exceeded"),
    )
    assert (
        CompletionFailed.model_validate_json(
            decode_frame(encode_frame(FrameKind.ERROR, failed)).body
        )
        == failed
    )


def test_keepalive_frame_is_one_byte() -> None:
    assert encode_frame(FrameKind.KEEPALIVE) == b"k"
    assert decode_frame(b"k").kind is FrameKind.KEEPALIVE


@pytest.mark.parametrize("data", [b"", b"x{}"])
def test_bad_frames_are_refused(data: bytes) -> None:
    with pytest.raises(ValueError, match="frame"):
        decode_frame(data)


def test_envelope_keeps_unknown_request_fields() -> None:
    envelope = ChatRequest.model_validate(
        {
            "v": 1,
            "request_id": "r",
            "key": {"key_id": "k"},
            "received_at": 1.0,
            "deadline": 2.0,
            "request": {
                "model": "m",
                "messages": [{"role": "user", "content": "hi"}],
                "provider": {"order": ["a"]},
                "models": ["x", "y"],
            },
        }
    )
    dumped = envelope.request.model_dump(exclude_unset=True)
    assert dumped["provider"] == {"order": ["a"]}
    assert dumped["models"] == ["x", "y"]
    assert envelope.key == KeyIdentity(key_id="k")


def test_unknown_wire_version_is_refused() -> None:
    with pytest.raises(ValueError, match="v"):
        CompletionFinished.model_validate(
            {"v": 2, "request_id": "r", "served_model": "m", "provider": "p"}
        )


def test_envelope_encoding_keeps_version_and_only_sent_fields() -> None:
    envelope = ChatRequest(
        request_id="r",
        key=KeyIdentity(key_id="k"),
        received_at=1.0,
        deadline=2.0,
        request={"model": "m", "messages": [{"role": "user", "content": "hi"}]},  # type: ignore[arg-type]
    )
    decoded = ChatRequest.model_validate_json(envelope.encode())
    assert decoded == envelope
    raw = envelope.encode().decode()
    assert '"v":1' in raw
    assert "temperature" not in raw
