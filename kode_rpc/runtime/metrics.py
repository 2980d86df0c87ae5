"""Counters for `metrics/prometheus` and `GET /metrics`, fed by tapping the event log (no extra
bookkeeping in the loop), written out by `prometheus-client`.

The counters are plain numbers kept here; the exposition text comes from a `CollectorRegistry`
of this `Metrics` alone (not the library's global default registry), so several runtimes in one
process (tests) never share or collide on a metric name, and the library's process/GC metrics
stay out. A custom collector yields metric families from the counters at scrape time: no
`_created` series, nothing to keep in step.

`prometheus_client` costs ~40 ms to import, so it is imported on the first scrape, never at
start-up (tests/test_startup.py checks).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .events import Envelope

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import CollectorRegistry

    from ..store.base import Store
    from .pool import AgentPool

BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0)
TOKEN_KINDS = ("input", "output", "cache_read", "cache_write")
ERROR_PHASES = ("model", "tool", "system", "lifecycle")
TURN_REASONS = ("completed", "interrupted", "error", "budget_exceeded", "max_steps")


@dataclass(frozen=True)
class Exposition:
    """One scrape: the text and the content type it is served with (the same on both faces)."""

    content_type: str
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")


class Metrics:
    def __init__(self) -> None:
        self.tokens: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.turns: Counter[str] = Counter()
        self.tool_buckets: Counter[float] = Counter()
        self.tool_count = 0
        self.tool_sum = 0.0
        self._registry: CollectorRegistry | None = None
        self._gauges: tuple[int, dict[str, Any]] = (0, {"active": 0, "working": 0})
        """What the store and the pool said for the scrape being rendered (set right before it)."""

    def tap(self, env: Envelope) -> None:
        ev = env.event
        t = ev["type"]
        if t == "token_usage":
            self.tokens["input"] += ev["inputTokens"]
            self.tokens["output"] += ev["outputTokens"]
            self.tokens["cache_read"] += ev["cacheReadTokens"]
            self.tokens["cache_write"] += ev["cacheWriteTokens"]
        elif t == "tool_executed":
            seconds = (ev["call"].get("durationMs") or 0) / 1000
            self.tool_count += 1
            self.tool_sum += seconds
            for b in BUCKETS:
                if seconds <= b:
                    self.tool_buckets[b] += 1
        elif t == "error":
            self.errors[ev["phase"]] += 1
        elif t == "done":
            self.turns[ev["reason"]] += 1

    async def scrape(self, store: Store, pool: AgentPool) -> Exposition:
        """The exposition of this moment, for `metrics/prometheus` and `GET /metrics` alike.

        Raises the store's StoreUnavailable when the agent count cannot be read: both faces
        then say the store is unavailable rather than serve a made-up `kode_agents_total`."""
        stored = (await store.collect_metrics()).storage.total_agents
        return self.render(pool.stats(), stored)

    def render(self, pool: dict[str, Any], stored_agents: int) -> Exposition:
        """The text for these gauges and the current counters (synchronous: the gauges set here
        are the ones the collector reads, with no await in between)."""
        from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

        self._gauges = (stored_agents, pool)
        return Exposition(CONTENT_TYPE_LATEST, generate_latest(self._get_registry()))

    def _get_registry(self) -> CollectorRegistry:
        if self._registry is None:
            from prometheus_client.registry import CollectorRegistry

            registry = CollectorRegistry(auto_describe=False)
            registry.register(_Collector(self))  # type: ignore[arg-type]  # duck-typed: has collect()
            self._registry = registry
        return self._registry

    def families(self) -> Iterator[Metric]:
        """The metric families, in the order the hand-written exposition had them."""
        from prometheus_client.metrics_core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )
        from prometheus_client.utils import floatToGoString

        stored, pool = self._gauges
        yield GaugeMetricFamily("kode_agents_total", "Agents in the store.", value=stored)
        yield GaugeMetricFamily("kode_agents_active", "Agents in memory.", value=pool["active"])
        yield GaugeMetricFamily("kode_agents_working", "Agents running a turn.", value=pool["working"])
        for name, doc, label, keys, counts in (
                ("kode_tokens_total", "Model tokens by kind.", "kind", TOKEN_KINDS, self.tokens),
                ("kode_errors_total", "Error events by phase.", "phase", ERROR_PHASES, self.errors),
                ("kode_turns_total", "Finished turns by reason.", "reason", TURN_REASONS, self.turns)):
            family = CounterMetricFamily(name, doc, labels=[label])
            for key in keys:
                family.add_metric([key], counts[key])
            yield family
        buckets = [(floatToGoString(b), self.tool_buckets[b]) for b in BUCKETS] + [("+Inf", self.tool_count)]
        yield HistogramMetricFamily("kode_tool_duration_seconds", "Tool execution time.",
                                    buckets=buckets, sum_value=self.tool_sum)


class _Collector:
    """The registry's view of one `Metrics` (prometheus_client calls `collect()` per scrape)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return self.metrics.families()
