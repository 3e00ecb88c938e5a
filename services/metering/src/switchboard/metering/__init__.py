"""Switchboard metering: usage events from JetStream into an exact ClickHouse ledger.

Reads :class:`~switchboard.common.events.UsageRecorded` from the usage stream with a
durable consumer, writes them in batches (``sink``), keeps the schema current
(``migrations``, ``sql/``) and answers usage reports, read-only analyst SQL and erasure
requests over NATS (``handlers``; the message models are ``switchboard.common.metering``).
"""
