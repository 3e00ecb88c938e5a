"""The analytics service's settings, read once from environment variables in the entry point.

PostHog's own variable names (``POSTHOG_API_KEY``, ``POSTHOG_HOST``) say where events go;
``ANALYTICS_*`` variables say what is sent and how the usage stream is consumed.
"""

from __future__ import annotations

from typing import Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from switchboard.common.events import PrivacyMode
from switchboard.common.settings import ServiceSettings

__all__ = ["DEFAULT_POSTHOG_HOST", "AnalyticsSettings", "PrivacyMode"]

DEFAULT_POSTHOG_HOST = "https://us.i.posthog.com"

# One upload may take up to three tries of ``ANALYTICS_POSTHOG_TIMEOUT`` (the SDK's HTTPS
# adapter retries connect and read errors twice); JetStream must not redeliver meanwhile.
_UPLOAD_TRIES = 3


class AnalyticsSettings(ServiceSettings):
    """Everything the analytics service reads from its environment."""

    # An empty variable (``POSTHOG_HOST=``) means "not set", as in a Helm value left blank.
    model_config = SettingsConfigDict(env_ignore_empty=True)

    posthog_api_key: SecretStr
    """``POSTHOG_API_KEY`` (required): the PostHog project API key (``phc_…``) events are
    sent with. Never logged."""
    posthog_host: str = DEFAULT_POSTHOG_HOST
    """``POSTHOG_HOST``: PostHog's ingestion host (``https://eu.i.posthog.com`` for the EU
    cloud, or a self-hosted instance), no trailing slash."""

    analytics_privacy_mode: PrivacyMode = "metadata"
    """``ANALYTICS_PRIVACY_MODE``: what leaves for PostHog unless the key says otherwise —
    ``off`` (nothing), ``metadata`` (usage, cost, latency, errors; no prompt or output
    text) or ``full`` (also ``$ai_input`` and ``$ai_output_choices``, redacted and capped,
    when the usage event carries them)."""
    analytics_max_content_chars: int = Field(default=16_384, ge=0, le=262_144)
    """``ANALYTICS_MAX_CONTENT_CHARS``: characters of prompt and output text one
    ``$ai_generation`` may carry in ``full`` mode, after redaction; the output first (up
    to half), then the prompt from its newest message back. Cut text ends in
    ``…[truncated]``."""
    analytics_hash_distinct_id: bool = False
    """``ANALYTICS_HASH_DISTINCT_ID``: send ``HMAC-SHA256(salt, id)`` (hex) as the distinct
    id instead of the end user, key owner or key id itself."""
    analytics_distinct_id_salt: SecretStr | None = None
    """``ANALYTICS_DISTINCT_ID_SALT``: the HMAC key for hashed distinct ids; required when
    hashing. Keep it stable: a new salt makes every person new in PostHog."""

    analytics_consumer: str = Field(default="switchboard-analytics", pattern=r"^[A-Za-z0-9_-]+$")
    """``ANALYTICS_CONSUMER``: the durable JetStream consumer's name (its own, apart from
    metering's). Replicas sharing the name share the work."""
    analytics_batch_size: int = Field(default=100, ge=1, le=1000)
    """``ANALYTICS_BATCH_SIZE``: usage events fetched, sent to PostHog in one batch and
    acknowledged together."""
    analytics_fetch_wait: float = Field(default=1.0, gt=0, le=30)
    """``ANALYTICS_FETCH_WAIT``: seconds one fetch waits for a first event; also the
    longest a SIGTERM waits for an idle fetch to end."""
    analytics_ack_wait: float = Field(default=60.0, ge=5)
    """``ANALYTICS_ACK_WAIT``: seconds JetStream waits for an acknowledgement before it
    redelivers; longer than three PostHog timeouts."""
    analytics_max_ack_pending: int = Field(default=1000, ge=1)
    """``ANALYTICS_MAX_ACK_PENDING``: usage events delivered and not yet acknowledged, at
    most (events waiting out an outage count)."""
    analytics_retry_initial: float = Field(default=1.0, gt=0)
    """``ANALYTICS_RETRY_INITIAL``: seconds before the first retry after PostHog failed a
    batch; doubles per failure (with jitter)."""
    analytics_retry_max: float = Field(default=60.0, gt=0)
    """``ANALYTICS_RETRY_MAX``: the longest wait between two retries."""
    analytics_posthog_timeout: float = Field(default=10.0, gt=0)
    """``ANALYTICS_POSTHOG_TIMEOUT``: seconds one upload to PostHog may take."""
    analytics_gzip: bool = True
    """``ANALYTICS_GZIP``: gzip the batches sent to PostHog."""

    @field_validator("posthog_host")
    @classmethod
    def _strip_trailing_slash(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://")):
            raise ValueError("POSTHOG_HOST must be an http:// or https:// URL")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.analytics_hash_distinct_id and not self.analytics_distinct_id_salt:
            raise ValueError("ANALYTICS_HASH_DISTINCT_ID needs ANALYTICS_DISTINCT_ID_SALT")
        if self.analytics_retry_max < self.analytics_retry_initial:
            raise ValueError("ANALYTICS_RETRY_MAX must be at least ANALYTICS_RETRY_INITIAL")
        if self.analytics_ack_wait <= _UPLOAD_TRIES * self.analytics_posthog_timeout:
            raise ValueError(
                "ANALYTICS_ACK_WAIT must exceed three times ANALYTICS_POSTHOG_TIMEOUT, or JetStream"
                " would redeliver events while their upload is still running"
            )
        return self
