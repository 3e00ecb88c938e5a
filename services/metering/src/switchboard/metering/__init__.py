"""Usage events from JetStream into ClickHouse. Built by the metering issue; nothing runs yet."""
