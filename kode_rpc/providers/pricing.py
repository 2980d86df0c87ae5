"""Prices per million tokens, for `token_usage.costUsd` and `budget.maxCostUsd`.

Matched by the longest model-name prefix; `[prices."model"]` in the config file
overrides or adds entries. Unknown models cost 0 (and the doc says so): a wrong
guess would stop turns on a budget nobody set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Price:
    input: float
    output: float
    cache_read: float = 0.0
    cache_write: float = 0.0


DEFAULT_PRICES: dict[str, Price] = {
    # Anthropic (USD per million tokens; cache write = 5-minute cache)
    "claude-opus-4": Price(15.0, 75.0, 1.5, 18.75),
    "claude-sonnet-4": Price(3.0, 15.0, 0.3, 3.75),
    "claude-3-7-sonnet": Price(3.0, 15.0, 0.3, 3.75),
    "claude-3-5-sonnet": Price(3.0, 15.0, 0.3, 3.75),
    "claude-haiku-4": Price(1.0, 5.0, 0.1, 1.25),
    "claude-3-5-haiku": Price(0.8, 4.0, 0.08, 1.0),
    # OpenAI
    "gpt-4o-mini": Price(0.15, 0.6, 0.075),
    "gpt-4o": Price(2.5, 10.0, 1.25),
    "gpt-4.1-mini": Price(0.4, 1.6, 0.1),
    "gpt-4.1": Price(2.0, 8.0, 0.5),
    "o3-mini": Price(1.1, 4.4, 0.55),
}


def price_for(model: str | None, overrides: dict[str, Any] | None = None) -> Price | None:
    if not model:
        return None
    table = dict(DEFAULT_PRICES)
    for name, p in (overrides or {}).items():
        table[name] = Price(float(p.get("input", 0)), float(p.get("output", 0)),
                            float(p.get("cacheRead", p.get("cache_read", 0))),
                            float(p.get("cacheWrite", p.get("cache_write", 0))))
    best = max((k for k in table if model.startswith(k)), key=len, default=None)
    return table[best] if best else None


def cost_usd(model: str | None, input_tokens: int, output_tokens: int, cache_read: int, cache_write: int,
             overrides: dict[str, Any] | None = None) -> float:
    price = price_for(model, overrides)
    if price is None:
        return 0.0
    return (input_tokens * price.input + output_tokens * price.output + cache_read * price.cache_read
            + cache_write * price.cache_write) / 1_000_000
