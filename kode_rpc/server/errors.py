"""The runtime's failures as the kode protocol's JSON-RPC errors (contract section 9)."""

from __future__ import annotations

from ..protocol.errors import AGENT_LOCKED, APPROVAL_NOT_PENDING, INVALID_PARAMS, NOT_FOUND, OVERLOADED, RpcError
from ..runtime import errors as e
from ..store.base import LeaseHeld, StoreUnavailable

_CODES: list[tuple[type[e.RuntimeFault], int]] = [
    (e.NotFound, NOT_FOUND),
    (e.InvalidInput, INVALID_PARAMS),
    (e.AgentLocked, AGENT_LOCKED),
    (e.Unavailable, OVERLOADED),
    (e.ApprovalNotPending, APPROVAL_NOT_PENDING),
]


def to_rpc(fault: e.RuntimeFault) -> RpcError:
    """The error a kode-protocol client gets for `fault` (`data.reason` always set)."""
    code = next((c for cls, c in _CODES if isinstance(fault, cls)), None)
    if code is None:
        raise TypeError(f"no error code for {type(fault).__name__}")
    return RpcError(code, fault.message, fault.reason, **fault.data)


def store_fault(exc: BaseException) -> e.RuntimeFault | None:
    """A store failure that reached a handler, as the fault the contract names (None: not one)."""
    if isinstance(exc, StoreUnavailable):
        return e.Unavailable(f"the store is unavailable: {exc}", "store_unavailable")
    if isinstance(exc, LeaseHeld):
        return e.AgentLocked(exc.agent_id, exc.pid, exc.host)
    return None
