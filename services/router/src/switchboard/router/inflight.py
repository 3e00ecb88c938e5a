"""The chat completions this replica is serving: one task each, a cap, cancel and drain."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from switchboard.router.reply import Reply

__all__ = ["InFlight"]

# Cancels for requests not (yet) served here. Every replica hears every cancel, so this
# only has to outlive the few milliseconds by which a cancel can overtake its request.
_EARLY_CANCELS_KEPT = 4096


@dataclass(frozen=True, slots=True)
class _Ticket:
    task: asyncio.Task[None]
    reply: Reply


class InFlight:
    """Runs each exchange in its own task and knows them by request id.

    ``slot`` caps how many exchanges talk to the upstream at once; the others wait for a
    slot inside their own task (and within their own deadline), so a burst never blocks
    the NATS subscription that delivers requests.
    """

    def __init__(self, max_in_flight: int) -> None:
        self.slot = asyncio.Semaphore(max_in_flight)
        """Held by an exchange while it talks to the upstream."""
        self._tickets: dict[str, _Ticket] = {}
        self._early_cancels: OrderedDict[str, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._tickets)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._tickets

    def spawn(
        self, reply: Reply, serve: Callable[[Reply], Coroutine[Any, Any, None]]
    ) -> asyncio.Task[None] | None:
        """Start ``serve(reply)`` in a task; ``None`` if that request id is already served."""
        request_id = reply.request_id
        if request_id in self._tickets:
            return None
        task = asyncio.get_running_loop().create_task(serve(reply), name=f"chat-{request_id}")
        self._tickets[request_id] = _Ticket(task, reply)
        task.add_done_callback(lambda _: self._tickets.pop(request_id, None))
        return task

    def cancel(self, request_id: str) -> bool:
        """The client of ``request_id`` left: publish nothing more and stop its exchange.

        ``False`` if this replica does not serve it; the id is remembered for a while, in
        case the cancel overtook its request (they travel on different subscriptions).
        """
        ticket = self._tickets.get(request_id)
        if ticket is None:
            self._early_cancels[request_id] = None
            if len(self._early_cancels) > _EARLY_CANCELS_KEPT:
                self._early_cancels.popitem(last=False)
            return False
        ticket.reply.silence()
        ticket.task.cancel()
        return True

    def cancelled_already(self, request_id: str) -> bool:
        """Whether the client of ``request_id`` left before its request arrived here."""
        return self._early_cancels.pop(request_id, False) is None

    async def drain(self, *, grace: float) -> int:
        """Let every exchange finish within ``grace`` s, then cancel the rest.

        Exchanges cancelled here are not silenced: they still tell their client that the
        router stopped. Returns how many had to be cancelled.
        """
        tasks = [ticket.task for ticket in self._tickets.values()]
        if not tasks:
            return 0
        _, pending = await asyncio.wait(tasks, timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
        return len(pending)
