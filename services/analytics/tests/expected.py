"""The property sets a ``$ai_generation`` carries, per privacy mode (docs/analytics-posthog.md)."""

from __future__ import annotations

POSTHOG_PROPERTIES = {
    "$ai_trace_id",
    "$ai_span_id",
    "$ai_model",
    "$ai_provider",
    "$ai_input_tokens",
    "$ai_output_tokens",
    "$ai_cache_read_input_tokens",
    "$ai_reasoning_tokens",
    "$ai_latency",
    "$ai_time_to_first_token",
    "$ai_http_status",
    "$ai_base_url",
    "$ai_is_error",
    "$ai_stream",
    "$ai_temperature",
    "$ai_max_tokens",
    "$ai_input_cost_usd",
    "$ai_output_cost_usd",
    "$ai_total_cost_usd",
}
OURS = {
    "switchboard_key_id",
    "switchboard_key_name",
    "switchboard_tier",
    "switchboard_requested_model",
    "switchboard_upstream_provider",
    "switchboard_status",
    "switchboard_error_type",
    "switchboard_retries",
    "switchboard_fallbacks",
    "switchboard_cache_hit",
    "switchboard_cost_saved_usd",
    "switchboard_cost_source",
    "switchboard_privacy_mode",
    "switchboard_distinct_id_source",
}
METADATA = POSTHOG_PROPERTIES | OURS
CONTENT = {"$ai_input", "$ai_output_choices", "switchboard_content_truncated"}

SDK_PROPERTIES = {
    "$lib",
    "$lib_version",
    "$geoip_disable",
    "$is_server",
    "$python_runtime",
    "$python_version",
    "$os",
    "$os_version",
    "$os_distro",
}
"""What the ``posthog`` SDK adds to every event on its own."""
