"""Usage events from JetStream into PostHog LLM analytics (``$ai_generation``).

Modules: ``settings`` (environment), ``privacy`` (modes, redaction, size cap),
``generation`` (usage event → PostHog properties), ``handlers`` (message → capture),
``sink`` (the ``posthog`` SDK, acceptance per event), ``consumer`` (the durable JetStream
consumer: ack, nak with backoff, term), ``service`` (lifespan), ``__main__``
(``switchboard-analytics``). The usage event is read as
:class:`switchboard.common.events.UsageRecorded`.
"""
