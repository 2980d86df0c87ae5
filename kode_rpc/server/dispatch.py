"""pygls as the dispatcher: method table, handler tasks, server-to-client requests.

Loaded lazily by `rpc.Connection.load_dispatch` (importing pygls is the biggest
part of start-up). `KodeProtocol` replaces the parts of pygls' `JsonRPCProtocol`
that do not fit a plain JSON-RPC server: serialization (keeps `"result": null`,
never leaks a traceback), the contract's error codes, and late replies.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from lsprotocol.types import ResponseErrorMessage
from pygls.exceptions import JsonRpcException
from pygls.protocol import JsonRPCNotification, JsonRPCProtocol, JsonRPCRequestMessage, JsonRPCResponseMessage
from pygls.server import JsonRPCServer

from ..protocol.errors import INTERNAL_ERROR, REQUEST_CANCELLED, RpcError
from .rpc import AfterResponse, Connection, dumps

log = logging.getLogger(__name__)


class KodeProtocol(JsonRPCProtocol):
    """pygls' JSON-RPC protocol with the contract's serialization and error rules."""

    conn: "Connection"

    def dispatch(self, msg_id: Any, method: str, params: dict[str, Any]) -> None:
        """Run a validated request's handler (params already a dict: no converter involved)."""
        self.handle_message(JsonRPCRequestMessage(id=msg_id, method=method, params=params, jsonrpc="2.0"))

    def _send_data(self, data: Any) -> None:
        if isinstance(data, ResponseErrorMessage):
            err = data.error
            payload: dict[str, Any] = {"jsonrpc": "2.0", "id": data.id,
                                       "error": {"code": err.code, "message": err.message}}
            if err.data is not None:
                payload["error"]["data"] = err.data
        elif isinstance(data, JsonRPCResponseMessage):
            payload = {"jsonrpc": "2.0", "id": data.id, "result": data.result}
        elif isinstance(data, JsonRPCRequestMessage):
            payload = {"jsonrpc": "2.0", "id": data.id, "method": data.method, "params": data.params}
        elif isinstance(data, JsonRPCNotification):
            payload = {"jsonrpc": "2.0", "method": data.method, "params": data.params}
        else:
            payload = data
        self.conn.output.send(dumps(payload))

    def _send_handler_result(self, future: Any, *, msg_id: Any) -> None:
        self._request_futures.pop(msg_id, None)
        after: Callable[[], None] | None = None
        if future.cancelled():
            self.conn.send_error(msg_id, RpcError(REQUEST_CANCELLED, f"request {msg_id!r} was cancelled", "cancelled"))
            return
        exc = future.exception()
        if exc is None:
            result = future.result()
            if isinstance(result, AfterResponse):
                result, after = result.result, result.after
            try:
                body = dumps({"jsonrpc": "2.0", "id": msg_id, "result": result})
            except (TypeError, ValueError) as exc:  # never leave a request unanswered
                log.error("cannot encode the result of %r: %s", msg_id, exc)
                self.conn.send_error(msg_id, RpcError(INTERNAL_ERROR, "internal error: unencodable result", "internal"))
                return
            self.conn.output.send(body)
            if after is not None:
                after()
            return
        if isinstance(exc, RpcError):
            self.conn.send_error(msg_id, exc)
        elif isinstance(exc, JsonRpcException):
            self.conn.send_error(msg_id, RpcError(exc.code, exc.message, "rpc_error"))
        else:
            log.error("internal error in request %r", msg_id, exc_info=exc)
            self.conn.send_error(msg_id, RpcError(INTERNAL_ERROR, f"internal error: {type(exc).__name__}", "internal"))

    def _handle_response(self, msg_id: Any, result: Any = None, error: Any = None) -> None:
        future = self._request_futures.pop(msg_id, None)
        if future is None or future.done():
            log.info("ignoring late or unknown response id %r", msg_id)
            return
        if error is not None:
            future.set_exception(JsonRpcException(
                message=str(error.get("message", "error")) if isinstance(error, dict) else "error",
                code=error.get("code", INTERNAL_ERROR) if isinstance(error, dict) else INTERNAL_ERROR,
                data=error.get("data") if isinstance(error, dict) else None,
            ))
        else:
            future.set_result(result)


def _dict_converter() -> Any:
    """pygls needs a converter, but ours is never asked to structure anything (we hand
    pygls dicts and serialize ourselves), so a bare one saves lsprotocol's hook setup."""
    import cattrs

    return cattrs.Converter()




def make_protocol(conn: Connection) -> KodeProtocol:
    server = JsonRPCServer(KodeProtocol, _dict_converter)
    protocol: KodeProtocol = server.protocol  # type: ignore[assignment]
    protocol.conn = conn
    for method, handler in conn.handlers.items():
        if method != "initialize":
            server.feature(method)(handler)
    return protocol
