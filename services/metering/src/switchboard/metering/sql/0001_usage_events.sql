-- The ledger: one row per usage event, i.e. per chat request that reached a router.
--
-- Exactness: JetStream may deliver an event more than once (metering stopped or
-- ClickHouse failed after an insert, before the acknowledgement). Every copy of an event
-- has the same sorting key (key_id, received_at, event_id), so ReplacingMergeTree keeps one
-- of them; everything that counts reads the table with FINAL (the rollup views do), which
-- collapses copies that no merge has reached yet. Retention (TTL) is set at start from
-- METERING_RETENTION_DAYS, not here.
CREATE TABLE IF NOT EXISTS usage_events
(
    event_id String COMMENT 'Unique id of the event; equal to request_id. Copies of one event share it and count once.',
    request_id String COMMENT 'The request id the client saw in the x-request-id header.',
    event_version UInt8 COMMENT 'Version of the UsageRecorded event this row was written from.',
    key_id LowCardinality(String) COMMENT 'Id of the API key that made the request.',
    key_name String COMMENT 'Name of the API key when the request was made.',
    end_user String COMMENT 'The request''s user field (the client''s own end-user id); empty when not sent.',
    requested_model LowCardinality(String) COMMENT 'The model the request named: a concrete model, a tier alias or auto.',
    served_model LowCardinality(String) COMMENT 'The model that answered (or was tried last, on failure); empty when none was tried.',
    model LowCardinality(String) ALIAS if(served_model = '', requested_model, served_model) COMMENT 'served_model, else requested_model: the model to group by.',
    provider LowCardinality(String) COMMENT 'The configured provider of served_model; empty when none was tried.',
    provider_base_url String COMMENT 'Base URL of that provider.',
    upstream_provider LowCardinality(String) COMMENT 'Who served it behind the provider, as reported (OpenRouter''s provider); empty when unknown.',
    tier LowCardinality(String) COMMENT 'The tier alias, custom alias or auto the request named; empty when it named a concrete model.',
    status LowCardinality(String) COMMENT 'ok (answered in full), error (ended with an error) or cancelled (the client went away first).',
    http_status UInt16 COMMENT 'HTTP status the client got; 499 when it went away first.',
    error_type LowCardinality(String) COMMENT 'OpenAI error type of a failed request; empty on success.',
    error_code LowCardinality(String) COMMENT 'Error code of a failed request (upstream_error, timeout, ...); empty on success.',
    error_message String COMMENT 'Short error message (at most 300 characters, never prompt text); empty on success.',
    prompt_tokens UInt64 COMMENT 'Input tokens, as the upstream counted them.',
    completion_tokens UInt64 COMMENT 'Output tokens, reasoning included.',
    total_tokens UInt64 COMMENT 'prompt_tokens + completion_tokens, as reported.',
    cached_tokens UInt64 COMMENT 'Prompt tokens served from the provider''s prompt cache.',
    reasoning_tokens UInt64 COMMENT 'Completion tokens spent on reasoning.',
    cost_usd Nullable(Decimal(18, 10)) COMMENT 'What the request cost, in US dollars; NULL when unknown (see cost_source).',
    cost_source LowCardinality(String) COMMENT 'Where cost_usd comes from: upstream (reported by it), catalog (list prices times tokens) or unknown.',
    latency_ms UInt32 COMMENT 'Milliseconds from the router picking the request up to its last frame.',
    ttft_ms Nullable(UInt32) COMMENT 'Milliseconds from the router picking the request up to the first token; NULL when none came.',
    stream Bool COMMENT 'True when the client asked for a streamed answer.',
    retries UInt16 COMMENT 'Retries of the same model.',
    fallbacks UInt16 COMMENT 'Times another model was tried after one failed.',
    attempts Array(Tuple(model String, provider String, status String, http_status Nullable(UInt16), error_code Nullable(String), duration_ms UInt32)) COMMENT 'Every upstream call made for the request, in order (use ARRAY JOIN).',
    temperature Nullable(Float64) COMMENT 'The temperature the client sent; NULL when not sent.',
    max_tokens Nullable(UInt32) COMMENT 'max_completion_tokens, else max_tokens, as the client sent it; NULL when not sent.',
    received_at DateTime64(3, 'UTC') COMMENT 'When the edge received the request (UTC). The time every report counts by.',
    started_at DateTime64(3, 'UTC') COMMENT 'When a router picked the request up (UTC).',
    finished_at DateTime64(3, 'UTC') COMMENT 'When the router sent its last frame, or learnt the client had left (UTC).',
    cache_hit Bool COMMENT 'True when the answer came from the response cache and no upstream was called.',
    cost_saved_usd Nullable(Decimal(18, 10)) COMMENT 'For a cache hit: what the answer would have cost, in US dollars.',
    stream_sequence UInt64 COMMENT 'Sequence number of the event in the JetStream usage stream (for audits).',
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3) COMMENT 'When metering wrote this copy (UTC); the copy written last is kept.',
    INDEX end_user_idx end_user TYPE bloom_filter GRANULARITY 4,
    INDEX request_id_idx request_id TYPE bloom_filter GRANULARITY 4
)
ENGINE = ReplacingMergeTree(ingested_at)
PARTITION BY toYYYYMM(received_at)
ORDER BY (key_id, received_at, event_id)
COMMENT 'Every chat request, one row per request (read with FINAL: redelivered copies collapse). Erase with switchboard usage erase.';
