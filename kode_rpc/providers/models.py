"""The model table: which models the providers know, and their context windows.

Used for a model picker (ACP's `model` config option), for "context used" figures
(`usage_update.size`), and by context compression. Matched by the longest
model-name prefix; unknown models get 128,000 tokens (the contract's default).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

DEFAULT_CONTEXT_WINDOW = 128_000


@dataclass(frozen=True)
class ModelInfo:
    provider: str
    model: str
    context_window: int


KNOWN: tuple[ModelInfo, ...] = (
    ModelInfo("anthropic", "claude-opus-4-1", 200_000),
    ModelInfo("anthropic", "claude-sonnet-4-5", 200_000),
    ModelInfo("anthropic", "claude-haiku-4-5", 200_000),
    ModelInfo("anthropic", "claude-3-7-sonnet", 200_000),
    ModelInfo("anthropic", "claude-3-5-haiku", 200_000),
    ModelInfo("openai", "gpt-4.1", 1_047_576),
    ModelInfo("openai", "gpt-4.1-mini", 1_047_576),
    ModelInfo("openai", "gpt-4o", 128_000),
    ModelInfo("openai", "gpt-4o-mini", 128_000),
    ModelInfo("openai", "o3-mini", 200_000),
)
_PREFIXES = sorted(((m.model, m.context_window) for m in KNOWN), key=lambda p: -len(p[0])) + [
    ("claude-", 200_000), ("o1", 200_000), ("o3", 200_000), ("o4", 200_000)]


def context_window(model: str | None) -> int:
    """Context window of `model` in tokens (longest known prefix; 128,000 if unknown)."""
    if model:
        for prefix, window in _PREFIXES:
            if model.startswith(prefix):
                return window
    return DEFAULT_CONTEXT_WINDOW


def offered(providers: dict[str, dict[str, Any]], default_model: dict[str, Any],
            env: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """`(provider, model)` pairs a user can pick here: echo always; a cloud provider's known
    models when its key is set or it is configured; the configured default model."""
    env = dict(os.environ) if env is None else env
    out: list[tuple[str, str]] = [("echo", "echo")]
    for provider, key in (("anthropic", "ANTHROPIC_API_KEY"), ("openai", "OPENAI_API_KEY")):
        cfg = providers.get(provider) or {}
        if env.get(cfg.get("apiKeyEnv") or key):
            out.extend((m.provider, m.model) for m in KNOWN if m.provider == provider)
        elif cfg.get("model"):
            out.append((provider, cfg["model"]))
    if default_model.get("provider") and default_model.get("model"):
        out.append((default_model["provider"], default_model["model"]))
    seen: set[tuple[str, str]] = set()
    return [p for p in out if not (p in seen or seen.add(p))]
