"""The dispatcher: validate params, run the handler as a task, dump the result, answer once.

This is the one place where the wire types are enforced on requests: every
request's params go through the params model of the method table
(`protocol/methods.py`), after one check of every string in them (no NUL byte,
no lone surrogate: the OS, SQLite and the UTF-8 output all refuse those, and
they must fail here, naming the field, not deep inside the store). Every result
is dumped through its result model. A handler therefore receives a validated
model and returns a model; it cannot forget a field or leak a Python object.

It also keeps the futures of our own server-to-client requests (`approval/request`)
and matches the client's replies to them.

Why our own and not pygls: pygls was used only to run handlers as tasks and keep
the request-future table, cost about 0.4 s of start-up (`lsprotocol.types`), and
needed its private attributes for cancellation and replies. This module is those
two jobs in a page (measurement in docs/architecture.md).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel, ValidationError

from ..protocol.errors import INTERNAL_ERROR, REQUEST_CANCELLED, RpcError, invalid_params
from ..protocol.methods import METHODS, Method
from ..runtime.errors import RuntimeFault
from .errors import store_fault, to_rpc

log = logging.getLogger(__name__)

Handler = Callable[[Any], Awaitable[Any]]
Send = Callable[[bytes], None]
_SURROGATE = re.compile("[\ud800-\udfff]")


class AfterResponse:
    """A handler result whose `after` callback runs once the response is written
    (e.g. approvals re-issued after the `agent/resume` response)."""

    def __init__(self, result: Any, after: Callable[[], None]) -> None:
        self.result = result
        self.after = after


class RawResult:
    """A result already encoded as JSON from stored, model-built data (e.g. stored events),
    so a large read is not decoded and re-encoded."""

    def __init__(self, json_text: str) -> None:
        self.json_text = json_text


class RemoteError(Exception):
    """The client answered our request with an error."""

    def __init__(self, error: Any) -> None:
        message = error.get("message", "error") if isinstance(error, dict) else "error"
        super().__init__(str(message))
        self.error = error


class OutOfRange:
    """A JSON number no field can hold (`1e400`, an integer of thousands of digits), kept
    as parsed so that validation names its field instead of failing the whole message."""

    def __init__(self, text: str) -> None:
        self.text = text[:40]


MAX_INT_DIGITS = 4000
"""Python refuses to convert longer integers (its 4300-digit limit); none of our fields holds one."""


def _parse_float(text: str) -> float | OutOfRange:
    value = float(text)
    return value if math.isfinite(value) else OutOfRange(text)


def _parse_int(text: str) -> int | OutOfRange:
    return OutOfRange(text) if len(text) > MAX_INT_DIGITS else int(text)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def loads(body: bytes) -> Any:
    """Strict JSON: `NaN`/`Infinity` are not JSON (-32700); numbers out of any range
    become `OutOfRange` markers for `bad_values` to report by field."""
    return json.loads(body, parse_constant=_no_constant, parse_float=_parse_float, parse_int=_parse_int)


MAX_PARAM_DEPTH = 100
"""Deepest nesting inside params (the envelope allows 512): deeper values cannot be stored
or serialized back (pydantic's serializer stops earlier) and no field needs them."""


def bad_strings(value: Any, path: str = "") -> list[dict[str, str]]:
    """Every string (keys included) holding a NUL byte or a lone surrogate, every number
    out of range, and values nested deeper than MAX_PARAM_DEPTH, by wire path: what the
    OS, SQLite, UTF-8 and the serializer refuse."""
    found: list[dict[str, str]] = []
    stack: list[tuple[Any, str, int]] = [(value, path, 0)]
    while stack:
        cur, where, depth = stack.pop()
        if isinstance(cur, OutOfRange):
            found.append({"field": where or "params", "message": f"number out of range: {cur.text}"})
        elif isinstance(cur, str):
            if "\x00" in cur:
                found.append({"field": where or "params", "message": "string holds a NUL byte"})
            elif _SURROGATE.search(cur):
                found.append({"field": where or "params", "message": "string holds a lone UTF-16 surrogate"})
        elif isinstance(cur, (dict, list)) and depth >= MAX_PARAM_DEPTH:
            found.append({"field": where or "params", "message": f"nested deeper than {MAX_PARAM_DEPTH} levels"})
        elif isinstance(cur, dict):
            for key, item in cur.items():
                sub = f"{where}.{key}" if where else str(key)
                if "\x00" in key or _SURROGATE.search(key):
                    found.append({"field": sub, "message": "the key holds a NUL byte or a lone surrogate"})
                stack.append((item, sub, depth + 1))
        elif isinstance(cur, list):
            stack.extend((item, f"{where}.{i}" if where else str(i), depth + 1) for i, item in enumerate(cur))
    return sorted(found, key=lambda e: e["field"])


def validate_params(method: Method, params: dict[str, Any]) -> BaseModel:
    """The method's params model from raw params, or -32602 naming each bad field."""
    bad = bad_strings(params)
    if bad:
        raise invalid_params(bad, "invalid_string")
    try:
        return method.params.model_validate(params)
    except ValidationError as exc:
        errors = [{"field": ".".join(str(p) for p in e["loc"]) or "params", "message": e["msg"]} for e in exc.errors()]
        raise invalid_params(errors) from None


def _key(msg_id: Any) -> tuple[type, Any]:
    return (type(msg_id), msg_id)  # 0 and "0" are different requests


class Dispatcher:
    """Runs handlers for requests and correlates replies to our own requests."""

    def __init__(self, send_result: Callable[[Any, Any], None], send_error: Callable[[Any, RpcError], None],
                 send_request: Callable[[str, str, Any], None], send_cancel: Callable[[str], None]) -> None:
        self._send_result = send_result
        self._send_error = send_error
        self._send_request = send_request
        self._send_cancel = send_cancel
        self.handlers: dict[str, Handler] = {}
        self._running: dict[tuple[type, Any], asyncio.Task[Any]] = {}
        self._outgoing: dict[str, asyncio.Future[Any]] = {}

    def register(self, method: str, handler: Handler) -> None:
        assert method in METHODS, f"{method} is not in the method table"
        self.handlers[method] = handler

    # --- requests from the client ------------------------------------------------
    def dispatch(self, msg_id: Any, method: str, params: dict[str, Any]) -> asyncio.Task[bool]:
        """Start the request's handler; the task's result says whether it succeeded."""
        task = asyncio.ensure_future(self._run(msg_id, METHODS[method], params))
        self._running[_key(msg_id)] = task
        task.add_done_callback(lambda _: self._running.pop(_key(msg_id), None))
        return task

    async def _run(self, msg_id: Any, method: Method, params: dict[str, Any]) -> bool:
        try:
            parsed = validate_params(method, params)
            result = await self.handlers[method.name](parsed)
        except asyncio.CancelledError:
            self._send_error(msg_id, RpcError(REQUEST_CANCELLED, f"request {msg_id!r} was cancelled", "cancelled"))
            return False
        except RpcError as exc:
            self._send_error(msg_id, exc)
            return False
        except RuntimeFault as exc:
            self._send_error(msg_id, to_rpc(exc))
            return False
        except Exception as exc:
            fault = store_fault(exc)
            if fault is not None:
                log.warning("%s (request %r): %s", method.name, msg_id, exc)
                self._send_error(msg_id, to_rpc(fault))
                return False
            log.error("internal error in %s (request %r)", method.name, msg_id, exc_info=exc)
            self._send_error(msg_id, RpcError(INTERNAL_ERROR, f"internal error: {type(exc).__name__}", "internal"))
            return False
        after = None
        if isinstance(result, AfterResponse):
            result, after = result.result, result.after
        try:
            self._send_result(msg_id, self._dump(method, result))
        except Exception as exc:  # never leave a request unanswered
            log.error("cannot encode the result of %s (request %r)", method.name, msg_id, exc_info=exc)
            self._send_error(msg_id, RpcError(INTERNAL_ERROR, "internal error: unencodable result", "internal"))
            return False
        if after is not None:
            after()
        return True

    @staticmethod
    def _dump(method: Method, result: Any) -> Any:
        """The result through its model: a model instance of the method's result type (or
        null for a method without one); a dict is validated by the model first."""
        if method.result is None:
            if result is not None:
                raise TypeError(f"{method.name} has no result, handler returned {type(result).__name__}")
            return None
        if isinstance(result, RawResult):
            return result
        if isinstance(result, dict):
            result = method.result.model_validate(result)
        if not isinstance(result, method.result):
            raise TypeError(f"{method.name} must return {method.result.__name__}, not {type(result).__name__}")
        return result.model_dump(mode="json", by_alias=True, exclude_none=True)

    def cancel(self, msg_id: Any) -> None:
        task = self._running.get(_key(msg_id))
        if task is not None and not task.done():
            task.cancel()

    # --- requests to the client --------------------------------------------------------
    def request(self, method: str, params: Any) -> tuple[str, asyncio.Future[Any]]:
        """Send a server-to-client request; returns its id and the reply future
        (resolved with the result, or failed with RemoteError)."""
        msg_id = f"kode-{uuid.uuid4().hex[:12]}"
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._outgoing[msg_id] = fut
        fut.add_done_callback(lambda _: self._outgoing.pop(msg_id, None))
        self._send_request(msg_id, method, params)
        return msg_id, fut

    def owns(self, msg_id: Any) -> bool:
        return isinstance(msg_id, str) and msg_id in self._outgoing

    def response(self, msg_id: str, result: Any, error: Any) -> None:
        fut = self._outgoing.pop(msg_id, None)
        if fut is None or fut.done():
            log.info("ignoring late or unknown response id %r", msg_id)
            return
        if error is not None:
            fut.set_exception(RemoteError(error))
        else:
            fut.set_result(result)

    def cancel_outgoing(self, msg_id: str) -> None:
        """Withdraw our request (`$/cancelRequest` to the client); a late reply is ignored."""
        fut = self._outgoing.pop(msg_id, None)
        if fut is not None and not fut.done():
            fut.cancel()
        self._send_cancel(msg_id)
