"""Error codes of the contract (section 9) and the exception that carries them.

`-32001` and `-32002` mean "overloaded/shutting down" and "not found" here, not
LSP's UnknownErrorCode/ServerNotInitialized. Every error has `data.reason`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ErrorSpec:
    """One error code: the single definition the docs' table, the schema's `errors` and
    the TypeScript client's `ErrorCodes` are generated from."""

    code: int
    name: str
    """The client constant's name (PascalCase)."""
    meaning: str
    reasons: tuple[str, ...]


ERRORS: tuple[ErrorSpec, ...] = (
    ErrorSpec(-32700, "ParseError", "parse error: body is not JSON, or a malformed frame",
              ("parse_error", "malformed_header")),
    ErrorSpec(-32600, "InvalidRequest", "invalid request", ("invalid_request", "batch_not_supported", "invalid_id", "too_deep")),
    ErrorSpec(-32601, "MethodNotFound", "method not found", ("method_not_found",)),
    ErrorSpec(-32602, "InvalidParams", "invalid params; `data.errors = [{field, message}]`",
              ("invalid_params", "invalid_string", "params_not_object", "agent_exists", "agent_busy")),
    ErrorSpec(-32603, "InternalError", "the server's own fault (never for bad input)", ("internal",)),
    ErrorSpec(-32800, "RequestCancelled", "request cancelled by `$/cancelRequest`", ("cancelled",)),
    ErrorSpec(-32001, "Unavailable", "overloaded, shutting down or store unavailable; retryable (not LSP's UnknownErrorCode)",
              ("shutting_down", "pool_full", "store_unavailable")),
    ErrorSpec(-32002, "NotFound", "agent, template, approval or checkpoint not found (not LSP's ServerNotInitialized)",
              ("agent_not_found", "template_not_found", "approval_not_found", "checkpoint_not_found")),
    ErrorSpec(-32003, "NotInitialized", "not initialized / already initialized", ("not_initialized", "already_initialized")),
    ErrorSpec(-32011, "ApprovalNotPending", "approval already decided; `data.recordedDecision`", ("approval_not_pending",)),
    ErrorSpec(-32012, "AgentLocked", "agent run by another process; `data.owner: {pid, host}` (also `data.pid`, `data.host`)",
              ("agent_locked",)),
    ErrorSpec(-32013, "TooLarge", "message larger than 64 MiB", ("too_large",)),
    ErrorSpec(-32014, "UnsupportedProtocol", "unsupported protocolVersion; `data.supported = [1]`", ("unsupported_protocol",)),
    ErrorSpec(-32020, "ProviderError", "provider error; `data.type`, `data.retryable` (a failed turn is an "
              "`agent/complete` result with `status: \"error\"`, not this error)", ("provider_error",)),
)

_BY_NAME = {e.name: e.code for e in ERRORS}
PARSE_ERROR = _BY_NAME["ParseError"]
INVALID_REQUEST = _BY_NAME["InvalidRequest"]
METHOD_NOT_FOUND = _BY_NAME["MethodNotFound"]
INVALID_PARAMS = _BY_NAME["InvalidParams"]
INTERNAL_ERROR = _BY_NAME["InternalError"]
REQUEST_CANCELLED = _BY_NAME["RequestCancelled"]
OVERLOADED = _BY_NAME["Unavailable"]
NOT_FOUND = _BY_NAME["NotFound"]
NOT_INITIALIZED = _BY_NAME["NotInitialized"]
APPROVAL_NOT_PENDING = _BY_NAME["ApprovalNotPending"]
AGENT_LOCKED = _BY_NAME["AgentLocked"]
INPUT_TOO_LARGE = _BY_NAME["TooLarge"]
UNSUPPORTED_PROTOCOL = _BY_NAME["UnsupportedProtocol"]
PROVIDER_ERROR = _BY_NAME["ProviderError"]


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
