"""Benchmarks: Switchboard against a fast local upstream, with LiteLLM as the reference.

Run ``uv run python -m bench.run`` (or ``make bench``); it writes ``docs/benchmarks.md``.
"""
