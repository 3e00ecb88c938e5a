"""``python -m tests.support.openrouter_emulator``: serve it standalone."""

from tests.support.openrouter_emulator.server import main

main()
