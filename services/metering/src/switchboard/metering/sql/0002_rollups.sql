-- Rollups. Views over the deduplicated ledger (FINAL), not materialised copies: a
-- materialised view would add every redelivered copy a second time, and an erased key or
-- user would stay in it. Reading them is one aggregation over the key's (or the hour's)
-- slice of the ledger, which the sorting key and the monthly partitions keep small.
CREATE VIEW IF NOT EXISTS usage_daily_by_key_model
(
    day Date COMMENT 'Day (UTC) the requests were received.',
    key_id String COMMENT 'API key id.',
    key_name String COMMENT 'The key''s name on its latest request that day.',
    model String COMMENT 'served_model, else requested_model.',
    requests UInt64 COMMENT 'Requests (each counted once, whatever the deliveries).',
    succeeded UInt64 COMMENT 'Requests with status ok.',
    errors UInt64 COMMENT 'Requests with status error.',
    cancelled UInt64 COMMENT 'Requests the client abandoned.',
    cache_hits UInt64 COMMENT 'Requests answered from the response cache.',
    prompt_tokens UInt64 COMMENT 'Input tokens.',
    completion_tokens UInt64 COMMENT 'Output tokens.',
    total_tokens UInt64 COMMENT 'All tokens.',
    cached_tokens UInt64 COMMENT 'Prompt tokens served from the provider''s prompt cache.',
    reasoning_tokens UInt64 COMMENT 'Reasoning tokens.',
    cost_usd Decimal(38, 10) COMMENT 'Cost in US dollars (requests of unknown cost add 0).',
    requests_without_cost UInt64 COMMENT 'Requests whose cost is unknown.',
    cost_saved_usd Decimal(38, 10) COMMENT 'What cache hits would have cost, in US dollars.'
)
AS SELECT
    toDate(received_at) AS day,
    key_id,
    argMax(key_name, received_at) AS key_name,
    model,
    count() AS requests,
    countIf(status = 'ok') AS succeeded,
    countIf(status = 'error') AS errors,
    countIf(status = 'cancelled') AS cancelled,
    countIf(cache_hit) AS cache_hits,
    sum(prompt_tokens) AS prompt_tokens,
    sum(completion_tokens) AS completion_tokens,
    sum(total_tokens) AS total_tokens,
    sum(cached_tokens) AS cached_tokens,
    sum(reasoning_tokens) AS reasoning_tokens,
    sum(ifNull(cost_usd, toDecimal64(0, 10))) AS cost_usd,
    countIf(usage_events.cost_usd IS NULL) AS requests_without_cost,
    sum(ifNull(cost_saved_usd, toDecimal64(0, 10))) AS cost_saved_usd
FROM usage_events FINAL
GROUP BY day, key_id, model
COMMENT 'Usage per API key, model and day (UTC), exact: computed from the deduplicated ledger.';

CREATE VIEW IF NOT EXISTS usage_hourly_by_model
(
    hour DateTime('UTC') COMMENT 'Start of the hour (UTC) the requests were received.',
    model String COMMENT 'served_model, else requested_model.',
    requests UInt64 COMMENT 'Requests.',
    succeeded UInt64 COMMENT 'Requests with status ok.',
    errors UInt64 COMMENT 'Requests with status error.',
    cancelled UInt64 COMMENT 'Requests the client abandoned.',
    cache_hits UInt64 COMMENT 'Requests answered from the response cache.',
    prompt_tokens UInt64 COMMENT 'Input tokens.',
    completion_tokens UInt64 COMMENT 'Output tokens.',
    total_tokens UInt64 COMMENT 'All tokens.',
    cost_usd Decimal(38, 10) COMMENT 'Cost in US dollars (requests of unknown cost add 0).',
    latency_p50_ms Float64 COMMENT 'Median latency, milliseconds (exact).',
    latency_p95_ms Float64 COMMENT '95th percentile latency, milliseconds (exact).',
    ttft_p50_ms Nullable(Float64) COMMENT 'Median time to first token, milliseconds; NULL when no request had one.',
    ttft_p95_ms Nullable(Float64) COMMENT '95th percentile time to first token, milliseconds.'
)
AS SELECT
    toStartOfHour(received_at) AS hour,
    model,
    count() AS requests,
    countIf(status = 'ok') AS succeeded,
    countIf(status = 'error') AS errors,
    countIf(status = 'cancelled') AS cancelled,
    countIf(cache_hit) AS cache_hits,
    sum(prompt_tokens) AS prompt_tokens,
    sum(completion_tokens) AS completion_tokens,
    sum(total_tokens) AS total_tokens,
    sum(ifNull(cost_usd, toDecimal64(0, 10))) AS cost_usd,
    quantileExact(0.5)(latency_ms) AS latency_p50_ms,
    quantileExact(0.95)(latency_ms) AS latency_p95_ms,
    quantileExact(0.5)(ttft_ms) AS ttft_p50_ms,
    quantileExact(0.95)(ttft_ms) AS ttft_p95_ms
FROM usage_events FINAL
GROUP BY hour, model
COMMENT 'Usage and latency per model and hour (UTC), exact: computed from the deduplicated ledger.';
