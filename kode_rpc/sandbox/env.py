"""The one builder of every child process environment (tools' shells, later MCP servers).

A process the server starts for an agent gets the server's environment minus
every variable that may hold a secret (`secrets.is_secret_name`: KEY, SECRET,
TOKEN, PASSWORD, CREDENTIAL in the name, and store URLs), minus the variables
the agent's `apiKeyEnv` names, plus back what `[sandbox] envAllow` lets through.
A frozen (PyInstaller) server also restores the library path it overrode and
drops its own bookkeeping variables, so programs a tool starts run as if started
from the user's shell.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping

from ..secrets import is_secret_name

_LIB_PATH_VARS = ("LD_LIBRARY_PATH", "DYLD_LIBRARY_PATH")


def restore_frozen(env: dict[str, str]) -> dict[str, str]:
    """Undo a PyInstaller bundle's overrides in `env` (in place; returns it).

    PyInstaller prepends its bundle directory to `LD_LIBRARY_PATH` (keeping the
    user's value in `LD_LIBRARY_PATH_ORIG`); tool subprocesses inheriting the
    bundle's libraries can crash or load the wrong `libssl`.
    """
    for key in [k for k in env if k.startswith("_PYI_") or k == "_MEIPASS2"]:
        del env[key]  # PyInstaller's own bookkeeping: a frozen program a tool starts must start fresh
    for var in _LIB_PATH_VARS:
        orig = env.pop(f"{var}_ORIG", None)
        if orig is not None:
            env[var] = orig
        else:
            env.pop(var, None)
    return env


def child_env(base: Mapping[str, str] | None = None, *, remove: Iterable[str] = (), allow: Iterable[str] = (),
              frozen: bool | None = None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a process started on an agent's behalf.

    `remove`: further names to drop (an agent's `apiKeyEnv`); `allow`: names let
    through although they look secret (`[sandbox] envAllow`; never overrides
    `remove`); `extra`: variables set as configured (an MCP server's own `env`).
    """
    source = dict(os.environ if base is None else base)
    allowed = set(allow) - set(remove)
    dropped = set(remove)
    env = {k: v for k, v in source.items() if k not in dropped and (k in allowed or not is_secret_name(k))}
    if frozen if frozen is not None else bool(getattr(sys, "frozen", False)):
        restore_frozen(env)
    if extra:
        env.update(extra)
    return env
