"""The OpenRouter-compatible upstream: HTTP client, stream parsing, error mapping."""
