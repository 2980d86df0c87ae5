"""What both HTTP providers share: the client, status -> error mapping, SSE reading.

Kept here so `anthropic.py` and `openai.py` are only their wire formats.
"""

from __future__ import annotations

import email.utils
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from httpx_sse import EventSource, SSEError

from ..logs import register_secret
from .base import ProviderError

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_MS = 600_000


def api_key(config: dict[str, Any], default_env: str, required: bool) -> str | None:
    """The key from the environment variable `apiKeyEnv` names (or the vendor default).

    Registered with the log redactor the moment it is read.
    """
    env = config.get("apiKeyEnv") or default_env
    key = os.environ.get(env)
    if key:
        register_secret(key)
        return key
    if required:
        raise ProviderError("authentication", f"no API key: set the environment variable {env}")
    return None


def retry_after(headers: httpx.Headers) -> float | None:
    """Seconds to wait from `retry-after-ms`, else `retry-after` (seconds or an HTTP date)."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def error_for_status(status: int, body: bytes, headers: httpx.Headers) -> ProviderError:
    """Map an HTTP error to the `-32020` vocabulary, with the server's message when it gave one."""
    message = body[:500].decode("utf-8", "replace")
    err_type = ""
    code = ""
    try:
        data = json.loads(body)
        err = data.get("error", data) if isinstance(data, dict) else {}
        if isinstance(err, dict):
            message = str(err.get("message") or message)
            err_type = str(err.get("type") or "")
            code = str(err.get("code") or "")
    except (ValueError, AttributeError):
        pass
    wait = retry_after(headers)
    quota = "insufficient_quota" in (err_type, code) or "billing" in err_type or status == 402
    if quota:
        return ProviderError("quota_exceeded", message, status=status)
    if status in (401, 403):
        return ProviderError("authentication", message, status=status)
    if status == 429:
        return ProviderError("rate_limit", message, status=status, retry_after=wait)
    if status == 408:
        return ProviderError("timeout", message, status=status, retry_after=wait)
    if status >= 500:
        return ProviderError("service_unavailable", message, status=status, retry_after=wait)
    return ProviderError("invalid_request", f"HTTP {status}: {message}", status=status)


def make_client(config: dict[str, Any]) -> httpx.AsyncClient:
    timeout_s = (config.get("timeoutMs") or DEFAULT_TIMEOUT_MS) / 1000
    return httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)))


@asynccontextmanager
async def sse_post(url: str, headers: dict[str, str], body: dict[str, Any], config: dict[str, Any]) -> AsyncIterator[EventSource]:
    """POST and yield the SSE event source, or raise ProviderError (status, timeout, connection).

    Leaving the block (also by cancellation) closes the connection at once.
    """
    async with make_client(config) as client:
        try:
            async with client.stream("POST", url, headers=headers, json=body) as response:
                if response.status_code != 200:
                    raise error_for_status(response.status_code, await response.aread(), response.headers)
                ctype = response.headers.get("content-type", "")
                if "text/event-stream" not in ctype:
                    raise ProviderError("invalid_response", f"expected an event stream, got {ctype or 'no content type'}")
                yield EventSource(response)
        except httpx.TimeoutException as exc:
            raise ProviderError("timeout", f"no response within the timeout ({type(exc).__name__})") from None
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
            raise ProviderError("connection", f"connection failed: {type(exc).__name__}: {exc}") from None
        except SSEError as exc:
            raise ProviderError("invalid_response", f"malformed event stream: {exc}") from None


def parse_json(data: str, what: str) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        raise ProviderError("invalid_response", f"{what} is not JSON: {data[:200]!r}") from None
