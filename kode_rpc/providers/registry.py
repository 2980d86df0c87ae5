"""Provider lookup by name; real providers are imported only when first used."""

from __future__ import annotations

from .base import Provider, ProviderError

AVAILABLE = ("echo", "scripted", "anthropic", "openai")
"""Providers this build can run (`initialize.capabilities.providers`)."""

_cache: dict[str, Provider] = {}


def get_provider(name: str) -> Provider:
    if name not in _cache:
        if name == "echo":
            from .echo import EchoProvider

            _cache[name] = EchoProvider()
        elif name == "scripted":
            from .scripted import ScriptedProvider

            _cache[name] = ScriptedProvider()
        elif name == "anthropic":
            from .anthropic import AnthropicProvider

            _cache[name] = AnthropicProvider()
        elif name == "openai":
            from .openai import OpenAIProvider

            _cache[name] = OpenAIProvider()
        else:
            raise ProviderError("provider_error", f"provider {name!r} is not available in this build", False)
    return _cache[name]
