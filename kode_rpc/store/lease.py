"""Who runs an agent: process liveness and the lease rule, shared by every store.

Not storage: a store keeps lease rows (SQLite), advisory locks (PostgreSQL) or a
folder lock (JSON), and asks these functions whether a recorded owner still
counts. Kept free of any backend so the runtime and the server may use them too
(`server/app.py` watches the client's `processId` with `pid_alive`).
"""

from __future__ import annotations

import os
import sys

__all__ = ["pid_alive", "lease_is_free"]


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this host.

    Used to take over a lease whose owner died without releasing it (same host
    only: a pid means nothing on another machine). A pid we may not signal
    still exists, so it counts as alive. Non-positive pids are never alive
    (`os.kill(0, 0)` would address our own process group).
    """
    if pid <= 0:
        return False
    if sys.platform == "win32":
        return _pid_alive_windows(pid)
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # a pid beyond pid_t exists nowhere
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def _pid_alive_windows(pid: int) -> bool:
    """Windows has no signal 0: open the process and look at its exit code."""
    import ctypes
    from ctypes import wintypes

    process_query_limited_information = 0x1000
    still_active = 259
    error_access_denied = 5
    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
    kernel32.OpenProcess.argtypes = [wintypes.DWORD, wintypes.BOOL, wintypes.DWORD]
    kernel32.OpenProcess.restype = wintypes.HANDLE
    kernel32.GetExitCodeProcess.argtypes = [wintypes.HANDLE, ctypes.POINTER(wintypes.DWORD)]
    kernel32.GetExitCodeProcess.restype = wintypes.BOOL
    kernel32.CloseHandle.argtypes = [wintypes.HANDLE]
    kernel32.CloseHandle.restype = wintypes.BOOL
    handle = kernel32.OpenProcess(process_query_limited_information, False, pid)
    if not handle:
        # The process exists but belongs to someone we may not query.
        return bool(ctypes.get_last_error() == error_access_denied)  # type: ignore[attr-defined]
    try:
        code = wintypes.DWORD()
        if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
            return True
        return code.value == still_active
    finally:
        kernel32.CloseHandle(handle)


def lease_is_free(held_pid: int, held_host: str, held_token: str, held_expires: float,
                  pid: int, host: str, token: str, now: float) -> bool:
    """Whether a recorded lease may be taken by (pid, host, token) at time `now`.

    Free when it expired, is already ours (same token), or is held by a dead
    pid on our own host (taken over at once, TTL notwithstanding).
    """
    del pid  # the token identifies us; the pid is only recorded
    return held_expires < now or held_token == token or (held_host == host and not pid_alive(int(held_pid)))
