"""The `switchboard` command: runs the local stack and talks to it."""
