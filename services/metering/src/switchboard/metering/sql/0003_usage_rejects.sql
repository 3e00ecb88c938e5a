-- Events metering could not read (not JSON, not a UsageRecorded it knows). They are kept
-- here, whole, and acknowledged, so that one bad message never blocks the ledger and
-- nothing is dropped unseen. Copies of one delivery share the stream sequence.
CREATE TABLE IF NOT EXISTS usage_rejects
(
    stream_sequence UInt64 COMMENT 'Sequence number of the message in the JetStream usage stream.',
    subject LowCardinality(String) COMMENT 'NATS subject it was published on.',
    key_id String COMMENT 'key_id found in the payload, if any (for erasure).',
    end_user String COMMENT 'end_user found in the payload, if any (for erasure).',
    reason String COMMENT 'Why it could not be read.',
    payload String COMMENT 'The message as received.',
    rejected_at DateTime64(3, 'UTC') DEFAULT now64(3) COMMENT 'When metering set it aside (UTC).'
)
ENGINE = ReplacingMergeTree(rejected_at)
ORDER BY stream_sequence
COMMENT 'Usage messages that were not valid events; investigate, then replay or delete.';
