"""Counters for `metrics/prometheus`, fed by tapping the event log (no extra bookkeeping in the loop)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from .events import Envelope

BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0)


class Metrics:
    def __init__(self) -> None:
        self.tokens: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.turns: Counter[str] = Counter()
        self.tool_buckets: Counter[float] = Counter()
        self.tool_count = 0
        self.tool_sum = 0.0

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

    def exposition(self, pool: dict[str, Any], stored_agents: int) -> str:
        lines = [
            "# HELP kode_agents_total Agents in the store.",
            "# TYPE kode_agents_total gauge",
            f"kode_agents_total {stored_agents}",
            "# HELP kode_agents_active Agents in memory.",
            "# TYPE kode_agents_active gauge",
            f"kode_agents_active {pool['active']}",
            "# HELP kode_agents_working Agents running a turn.",
            "# TYPE kode_agents_working gauge",
            f"kode_agents_working {pool['working']}",
            "# HELP kode_tokens_total Model tokens by kind.",
            "# TYPE kode_tokens_total counter",
        ]
        for kind in ("input", "output", "cache_read", "cache_write"):
            lines.append(f'kode_tokens_total{{kind="{kind}"}} {self.tokens[kind]}')
        lines += ["# HELP kode_errors_total Error events by phase.", "# TYPE kode_errors_total counter"]
        for phase in ("model", "tool", "system", "lifecycle"):
            lines.append(f'kode_errors_total{{phase="{phase}"}} {self.errors[phase]}')
        lines += ["# HELP kode_turns_total Finished turns by reason.", "# TYPE kode_turns_total counter"]
        for reason in ("completed", "interrupted", "error", "budget_exceeded", "max_steps"):
            lines.append(f'kode_turns_total{{reason="{reason}"}} {self.turns[reason]}')
        lines += ["# HELP kode_tool_duration_seconds Tool execution time.", "# TYPE kode_tool_duration_seconds histogram"]
        for b in BUCKETS:
            lines.append(f'kode_tool_duration_seconds_bucket{{le="{b}"}} {self.tool_buckets[b]}')
        lines.append(f'kode_tool_duration_seconds_bucket{{le="+Inf"}} {self.tool_count}')
        lines.append(f"kode_tool_duration_seconds_sum {self.tool_sum:.6f}")
        lines.append(f"kode_tool_duration_seconds_count {self.tool_count}")
        return "\n".join(lines) + "\n"
