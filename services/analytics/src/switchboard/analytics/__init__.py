"""Usage events from JetStream into PostHog. Built by the analytics issue; nothing runs yet."""
