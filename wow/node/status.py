"""
The node's C{status} and C{counters} control commands.

Each part contributes a section with L{StatusBoard.contribute}: a callable
returning a JSON-able value (or a Deferred of one).  Later parts (overlay,
router, security) add their own sections without touching the others.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.interfaces import IReactorTime

from wow import __version__
from wow.metrics import Counters


class StatusBoard:
    """Collects the node's status from every part that contributes one."""

    def __init__(self, clock: IReactorTime, counters: Counters) -> None:
        self.clock = clock
        self.counters = counters
        self.started = clock.seconds()
        self._parts: dict[str, Callable[[], Any]] = {}

    def contribute(self, name: str, section: Callable[[], Any]) -> None:
        """Add (or replace) the section C{name} of the status."""
        self._parts[name] = section

    def status(self, args: dict[str, Any] | None = None) -> Deferred[dict[str, Any]]:
        names = sorted(self._parts)
        d = gatherResults([maybeDeferred(self._parts[n]) for n in names], consumeErrors=True)

        def combine(values: list[Any]) -> dict[str, Any]:
            out: dict[str, Any] = {
                "version": __version__,
                "uptime": round(self.clock.seconds() - self.started, 3),
            }
            out.update(zip(names, values, strict=True))
            return out

        return d.addCallback(combine)

    def counters_snapshot(self, args: dict[str, Any] | None = None) -> dict[str, Any]:
        self.counters.refresh()  # counts kept as plain ints on hot paths, gauges
        return self.counters.snapshot()
