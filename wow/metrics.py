"""
Counters that every part of WOW increments, independent of any exporter.

Sans-I/O objects (codecs' callers, DHCP server, overlay, DNS) take a
L{Counters} and call C{counters.inc("frames_dropped", reason="bad-arp")}.
The Prometheus exporter (and C{wow status}) read the same object, so the
logic never imports prometheus_client or touches a global registry.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator

LabelKey = tuple[tuple[str, str], ...]


class Counters:
    """
    A set of named, labelled, monotonically increasing counters.

    Names follow Prometheus conventions (C{snake_case}, no C{_total} suffix:
    the exporter adds it).  Labels are keyword arguments with string values.
    """

    def __init__(self) -> None:
        self._values: dict[str, dict[LabelKey, float]] = defaultdict(dict)
        self._gauges: dict[str, dict[LabelKey, float]] = defaultdict(dict)
        self._help: dict[str, str] = {}
        #: name -> labels -> [count, sum] of observed values (durations).
        self._summaries: dict[str, dict[LabelKey, list[float]]] = defaultdict(dict)
        self._refreshers: list[Callable[[], None]] = []

    def describe(self, name: str, help_text: str) -> None:
        """Attach a one-line description to C{name} for exporters."""
        self._help[name] = help_text

    def inc(self, name: str, amount: float = 1, **labels: str) -> None:
        """Add C{amount} to the counter C{name} with C{labels}."""
        key = tuple(sorted(labels.items()))
        series = self._values[name]
        series[key] = series.get(key, 0) + amount

    def set(self, name: str, value: float, **labels: str) -> None:
        """Set the gauge C{name} (a value that goes up and down) to C{value}."""
        self._gauges[name][tuple(sorted(labels.items()))] = value

    def gauge(self, name: str, **labels: str) -> float:
        return self._gauges.get(name, {}).get(tuple(sorted(labels.items())), 0)

    def gauge_names(self) -> Iterator[str]:
        return iter(sorted(self._gauges))

    def gauge_series(self, name: str) -> Iterator[tuple[dict[str, str], float]]:
        for key, value in sorted(self._gauges.get(name, {}).items()):
            yield dict(key), value

    def get(self, name: str, **labels: str) -> float:
        """
        The value of one counter series, or the sum of all series of
        C{name} when no labels are given.
        """
        series = self._values.get(name, {})
        if not labels:
            return sum(series.values())
        return series.get(tuple(sorted(labels.items())), 0)

    def help_for(self, name: str) -> str:
        return self._help.get(name, name.replace("_", " "))

    def names(self) -> Iterator[str]:
        return iter(sorted(self._values))

    def series(self, name: str) -> Iterator[tuple[dict[str, str], float]]:
        for key, value in sorted(self._values.get(name, {}).items()):
            yield dict(key), value

    def snapshot(self) -> dict[str, dict[str, float]]:
        """A JSON-friendly copy: C{{name: {"k=v,k=v": value}}}."""
        out: dict[str, dict[str, float]] = {}
        for name, series in self._values.items():
            out[name] = {
                ",".join(f"{k}={v}" for k, v in key) or "": value
                for key, value in series.items()
            }
        return out

    def observe(self, name: str, value: float, **labels: str) -> None:
        """Record one observation (e.g. a latency in seconds) of the summary C{name}."""
        series = self._summaries[name].setdefault(tuple(sorted(labels.items())), [0, 0.0])
        series[0] += 1
        series[1] += value

    def summary_names(self) -> Iterator[str]:
        return iter(sorted(self._summaries))

    def summary_series(self, name: str) -> Iterator[tuple[dict[str, str], int, float]]:
        """C{(labels, count, sum)} of each series of the summary C{name}."""
        for key, (count, total) in sorted(self._summaries.get(name, {}).items()):
            yield dict(key), int(count), total

    def add_refresher(self, refresh: Callable[[], None]) -> None:
        """
        Call C{refresh()} before each read by an exporter: gauges that mirror
        a table (links by kind) are set then rather than on every change.
        """
        self._refreshers.append(refresh)

    def refresh(self) -> None:
        for refresh in self._refreshers:
            refresh()
