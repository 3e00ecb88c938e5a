"""Switchboard's shared wire contract. Holds no business logic."""
