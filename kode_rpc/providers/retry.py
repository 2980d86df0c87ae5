"""Retries of a streamed model call, with tenacity.

A call is retried only while nothing of it has reached the client: once a text,
thinking or tool-call event went out, a failure ends the step with an error
instead of replaying the stream (the client would see the same text twice).
The wait honours the server's `retry-after-ms` / `retry-after`, else it is
exponential backoff (`baseDelayMs * 2**(attempt-1)`, capped at `maxDelayMs`)
with +-`jitterFactor` jitter.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .base import ModelRequest, Provider, ProviderError, StreamEvent, UsageReport

if TYPE_CHECKING:
    from tenacity import RetryCallState

# tenacity is imported only when a call fails in a way that is retried: a model call
# that succeeds on its first attempt (every `echo` and `scripted` call, and most real
# ones) never loads it, so it costs neither start-up nor the first turn.


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 3
    base_delay_ms: int = 1000
    max_delay_ms: int = 60000
    jitter_factor: float = 0.2

    @classmethod
    def from_wire(cls, data: dict | None) -> "RetryPolicy":
        data = data or {}
        return cls(
            max_retries=int(data.get("maxRetries", cls.max_retries)),
            base_delay_ms=int(data.get("baseDelayMs", cls.base_delay_ms)),
            max_delay_ms=int(data.get("maxDelayMs", cls.max_delay_ms)),
            jitter_factor=float(data.get("jitterFactor", cls.jitter_factor)),
        )


class _Wait:
    """Server-given delay first, else jittered exponential backoff (a tenacity `wait`)."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy

    def __call__(self, retry_state: RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        cap = self.policy.max_delay_ms / 1000
        if isinstance(exc, ProviderError) and exc.retry_after is not None:
            return min(max(exc.retry_after, 0.0), cap)
        base = self.policy.base_delay_ms / 1000 * 2 ** (retry_state.attempt_number - 1)
        jitter = 1 + random.uniform(-self.policy.jitter_factor, self.policy.jitter_factor)
        return min(base * jitter, cap)


OnRetry = Callable[[int, int, ProviderError], None]
"""Called before each wait with (attempt number, delay ms, the error)."""


async def stream_with_retry(provider: Provider, request: ModelRequest, policy: RetryPolicy,
                            on_retry: OnRetry) -> AsyncIterator[StreamEvent]:
    streamed = False

    def retryable(exc: BaseException) -> bool:
        return isinstance(exc, ProviderError) and exc.retryable and not streamed

    # Attempt 1 runs bare; only a failure that will be retried hands over to tenacity.
    try:
        async for event in provider.stream(request):
            if not isinstance(event, UsageReport):
                streamed = True
            yield event
        return
    except ProviderError as exc:
        if policy.max_retries < 1 or not retryable(exc):
            raise
        first_failure: ProviderError | None = exc

    from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        if isinstance(exc, ProviderError):
            on_retry(state.attempt_number, int(delay * 1000), exc)

    retrying = AsyncRetrying(
        stop=stop_after_attempt(policy.max_retries + 1),
        wait=_Wait(policy),
        retry=retry_if_exception(retryable),
        before_sleep=before_sleep,
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            if first_failure is not None:  # tenacity's attempt 1 is the one that already failed
                failed, first_failure = first_failure, None
                raise failed
            async for event in provider.stream(request):
                if not isinstance(event, UsageReport):
                    streamed = True
                yield event
