"""The event loop every face runs on: asyncio's selector loop, told when it goes idle.

Why: the SQLite store commits on the event loop thread at the moment the loop would
otherwise wait (`store/writer.py`, inline mode) instead of on a writer thread. A
writer thread needs the GIL for every statement, and while the loop is busy (a
model streaming) it got it late: measured, a batch of 8 writes took ~1 ms during a
100-chunk turn instead of ~0.1 ms, and the turn's `done` waited behind it; each
commit also cost two thread wake-ups (loop -> writer -> loop). Committing when the
loop is idle needs no hand-off at all, and a burst of writes made in one busy
stretch becomes one transaction (figures: `bench/README.md`).

The signal is the one asyncio already computes: before each wait for I/O the loop
calls `selector.select(timeout)` with `timeout == 0` when callbacks are ready to
run (busy), and a positive timeout or None when it is about to block (idle). An
`IdleSelector` runs its hooks there: `hook(idle) -> bool`, True when the hook did
work (resolved futures, scheduled callbacks), in which case the select does not
block so that work is handled at once. Hooks are also called while the loop is busy
(`idle=False`) so that one can bound how long it waits for idleness.

Windows keeps asyncio's default (proactor) loop, which runs subprocesses; it has no
hooks, and the store then uses its writer thread.
"""

from __future__ import annotations

import asyncio
import logging
import selectors
import sys
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["IdleHook", "IdleSelector", "new_loop", "run", "idle_hooks"]

log = logging.getLogger(__name__)

T = TypeVar("T")

IdleHook = Callable[[bool], bool]
"""`hook(idle)`: called before each wait for I/O; returns True when it did work."""

_SELECTORS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, IdleSelector] = weakref.WeakKeyDictionary()


class IdleSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    """The platform's default selector, running `hooks` before each select."""

    def __init__(self) -> None:
        super().__init__()
        self.hooks: list[IdleHook] = []

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if self.hooks:  # called on every loop iteration: kept to a few attribute reads
            idle = timeout is None or timeout > 0
            worked = False
            for hook in self.hooks:  # a hook never adds or removes hooks
                try:
                    worked = hook(idle) or worked
                except Exception:  # a broken hook must not stop the loop
                    log.exception("event loop idle hook failed")
            if worked:
                timeout = 0  # what the hooks scheduled runs now, not after the next I/O
        return super().select(timeout)  # type: ignore[no-any-return]


def new_loop() -> asyncio.AbstractEventLoop:
    """A selector loop with idle hooks (POSIX); asyncio's default loop on Windows."""
    if sys.platform == "win32":
        return asyncio.new_event_loop()
    selector = IdleSelector()
    loop = asyncio.SelectorEventLoop(selector)
    _SELECTORS[loop] = selector
    return loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` on a `new_loop()`."""
    with asyncio.Runner(loop_factory=new_loop) as runner:
        return runner.run(main)


def idle_hooks(loop: asyncio.AbstractEventLoop) -> list[IdleHook] | None:
    """The hook list of a loop made by `new_loop()` (append to add one); None for any other loop."""
    selector = _SELECTORS.get(loop)
    return selector.hooks if selector is not None else None
