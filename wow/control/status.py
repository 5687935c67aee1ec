"""
C{status}: one command every part of a daemon contributes a section to.

Each part calls L{add_status_section} with its name and a handler; the
C{status} command returns C{{name: section, ...}} (e.g. C{{"overlay": {...},
"tap": {...}}}), so parts never edit each other's status code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer

Section = Callable[[dict[str, Any]], Any]


def add_status_section(control: Any, name: str, section: Section) -> None:
    """Contribute C{section(args)} under C{name} to C{control}'s C{status} command."""
    sections: dict[str, Section] | None = getattr(control, "status_sections", None)
    if sections is None:
        sections = control.status_sections = {}

        def status(args: dict[str, Any]) -> defer.Deferred[Any]:
            assert sections is not None
            names = sorted(sections)
            ds = [defer.maybeDeferred(sections[n], args) for n in names]
            d = defer.gatherResults(ds, consumeErrors=True)
            d.addCallback(lambda results: dict(zip(names, results, strict=True)))
            return d

        control.register("status", status)
    sections[name] = section
