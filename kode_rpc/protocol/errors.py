"""Error codes of the contract (section 9) and the exception that carries them.

`-32001` and `-32002` mean "overloaded/shutting down" and "not found" here, not
LSP's UnknownErrorCode/ServerNotInitialized. Every error has `data.reason`.
"""

from __future__ import annotations

from typing import Any

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
REQUEST_CANCELLED = -32800
OVERLOADED = -32001
NOT_FOUND = -32002
NOT_INITIALIZED = -32003
APPROVAL_NOT_PENDING = -32011
AGENT_LOCKED = -32012
INPUT_TOO_LARGE = -32013
UNSUPPORTED_PROTOCOL = -32014
PROVIDER_ERROR = -32020



class RpcError(Exception):
    """A JSON-RPC error the server answers with; `data` always has `reason`."""

    def __init__(self, code: int, message: str, reason: str, **data: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data: dict[str, Any] = {"reason": reason, **data}

    def to_wire(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "data": self.data}


def not_found(kind: str, ident: str) -> RpcError:
    return RpcError(NOT_FOUND, f"{kind} not found: {ident}", f"{kind}_not_found", id=ident)


def invalid_params(errors: list[dict[str, str]], reason: str = "invalid_params") -> RpcError:
    fields = ", ".join(e["field"] for e in errors)
    return RpcError(INVALID_PARAMS, f"invalid params: {fields}", reason, errors=errors)
