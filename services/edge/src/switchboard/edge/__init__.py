"""Switchboard edge: the OpenAI-compatible HTTP API."""
