"""Switchboard router: serves chat requests from NATS with OpenRouter-compatible upstreams."""
