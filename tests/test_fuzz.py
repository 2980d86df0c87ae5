"""Seeded fuzz of every client->server request over real pipes (contract sections 1, 2, 3, 9).

One real server gets a few thousand malformed and hostile requests, one at a time
(so every reply, including `id: null` parse errors, belongs to exactly one request):
wrong types in every field (field names come from the pydantic params models),
NUL bytes, lone surrogates, huge and non-finite numbers, 600-level nesting, 1 MB
strings, relative / NUL / over-long paths, unicode oddities, unknown keys, arrays
instead of objects, odd request ids, and raw bodies that are not JSON at all.

Checked for every request (section 9): it is answered within a timeout; the
answer is never `-32603`; every error has `data.reason`; `-32602` has
`data.errors` naming the field that was broken; a body that is not JSON gets
`-32700` and valid JSON never does; lone surrogates, NUL in paths and paths the
OS refuses get `-32602`; a success result has the shape of the method's result
model; the server writes strict JSON only (no `NaN`/`Infinity`). After the run
the server is alive, answers a normal echo turn, its agents are consistent and
its stderr holds no traceback.

    KODE_FUZZ_SEED=123 KODE_FUZZ_COUNT=20000 python -m pytest -q tests/test_fuzz.py -s

The seed is random unless given and printed with every failure. Run this file as
a script (`python tests/test_fuzz.py [seed] [count]`) to fuzz outside pytest.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import sys
import tempfile
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from kode_rpc.client import RpcClient
from kode_rpc.protocol.methods import METHODS

FUZZ_COUNT = int(os.environ.get("KODE_FUZZ_COUNT") or 3000)
REQUEST_TIMEOUT = float(os.environ.get("KODE_FUZZ_TIMEOUT") or 15.0)
SKIP_IN_MAIN_LOOP = {"shutdown", "initialize"}
PATH_FIELDS = {"workDir", "allowPaths", "workspaceFolders"}
FIXTURE_AGENTS = ("fz-echo-1", "fz-echo-2", "fz-script")


def _seed() -> int:
    env = os.environ.get("KODE_FUZZ_SEED")
    return int(env) if env else random.SystemRandom().randrange(2**32)


# --- a client that also checks what the server writes is strict JSON ----------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-JSON constant {name}")


class StrictClient(RpcClient):
    """`RpcClient` whose reader also records every body that is not strict JSON
    (Python's json accepts `NaN`/`Infinity`; JSON.parse in an editor does not)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.nonstrict: list[bytes] = []
        super().__init__(*args, **kwargs)

    def _decode(self, body: bytes) -> Any:
        try:
            json.loads(body, parse_constant=_reject_constant)
        except ValueError:
            self.nonstrict.append(body[:300])
        return super()._decode(body)


def frame(body: bytes) -> bytes:
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


async def exchange(c: RpcClient, msg_id: Any, body: bytes, timeout: float) -> dict[str, Any] | None:
    """Write one framed body and return the reply that answers it: the response with
    this id, or (for a body the server could not attribute) a new `id: null` error."""
    start = len(c.messages)
    pos = [start]
    c.write_raw(frame(body))

    def find() -> dict[str, Any] | None:
        while pos[0] < len(c.messages):
            m = c.messages[pos[0]]
            pos[0] += 1
            if "method" in m:
                continue
            if m.get("id") is None and "error" in m:
                return m
            if msg_id is not None and m.get("id") == msg_id and type(m.get("id")) is type(msg_id):
                return m
        return None

    try:
        return await c.wait_for(find, timeout)
    except (asyncio.TimeoutError, ConnectionError):
        return None


# --- field paths from the params models ------------------------------------------------------


def _unwrap(ann: Any) -> list[Any]:
    """The non-None alternatives of an annotation (Optional/Union/Annotated flattened)."""
    origin = typing.get_origin(ann)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(ann)[0])
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        out: list[Any] = []
        for arg in typing.get_args(ann):
            if arg is not type(None):
                out.extend(_unwrap(arg))
        return out
    return [ann]


def _is_model(t: Any) -> bool:
    return isinstance(t, type) and issubclass(t, BaseModel)


def kind_of(ann: Any) -> str:
    alts = _unwrap(ann)
    kinds = set()
    for t in alts:
        origin = typing.get_origin(t)
        if t is str:
            kinds.add("str")
        elif t is bool:
            kinds.add("bool")
        elif t is int:
            kinds.add("int")
        elif t is float:
            kinds.add("float")
        elif origin is typing.Literal:
            kinds.add("literal")
        elif origin is list or t is list:
            kinds.add("list")
        elif origin is dict or t is dict:
            kinds.add("dict")  # free-form: metadata, a tool call's input
        elif _is_model(t):
            kinds.add("object")
        else:
            kinds.add("any")
    return kinds.pop() if len(kinds) == 1 else "union"


def field_paths(model: type[BaseModel], prefix: tuple[Any, ...] = (), depth: int = 0) -> list[tuple[tuple[Any, ...], str]]:
    """Every wire field path of a params model (nested models and list items included),
    with the kind of value it takes."""
    out: list[tuple[tuple[Any, ...], str]] = []
    for name, f in model.model_fields.items():
        path = prefix + (f.alias or name,)
        out.append((path, kind_of(f.annotation)))
        if depth > 4:
            continue
        for t in _unwrap(f.annotation):
            if _is_model(t):
                out.extend(field_paths(t, path, depth + 1))
            elif typing.get_origin(t) is list:
                for item in _unwrap(typing.get_args(t)[0]):
                    if _is_model(item):
                        out.extend(field_paths(item, path + (0,), depth + 1))
    seen: dict[tuple[Any, ...], str] = {}
    for p, k in out:
        seen.setdefault(p, k)
    return list(seen.items())


def set_path(obj: Any, path: tuple[Any, ...], value: Any) -> Any:
    """`obj` with `value` at `path`, creating dicts/lists on the way (the original is not changed)."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(head, int):
        lst = list(obj) if isinstance(obj, list) else []
        while len(lst) <= head:
            lst.append({})
        lst[head] = set_path(lst[head], rest, value)
        return lst
    d = dict(obj) if isinstance(obj, dict) else {}
    d[head] = set_path(d.get(head), rest, value)
    return d


def del_path(obj: Any, path: tuple[Any, ...]) -> Any:
    if not path:
        return obj
    head, rest = path[0], path[1:]
    if isinstance(head, int):
        if not isinstance(obj, list) or len(obj) <= head:
            return obj
        lst = list(obj)
        if rest:
            lst[head] = del_path(lst[head], rest)
        else:
            del lst[head]
        return lst
    if not isinstance(obj, dict) or head not in obj:
        return obj
    d = dict(obj)
    if rest:
        d[head] = del_path(d[head], rest)
    else:
        del d[head]
    return d


def get_path(obj: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        try:
            obj = obj[p]
        except (KeyError, IndexError, TypeError):
            return None
    return obj


# --- hostile values -----------------------------------------------------------------------

HOSTILE_STR = [
    "", " ", "\x00", "a\x00b", "\ud800", "\udfff", "x\udc00y", "\udc00\ud800", "\ud83d\ude00", "\u202e\u0301",
    "\ufeff", "\u200b", "\uff21", "e\u0301" * 50, "\r\n", "\u2028\u2029", "..", ".", "/", "../../../../etc/passwd",
    "~", "~/x", "C:\\Windows", "\\\\?\\C:\\x", "${HOME}", "%s%n%x", "'; DROP TABLE agents; --", "null", "0", "-1",
    "a" * 128, "a" * 129, "agt_" + "f" * 16, "\x7f", "\x1b[31mred", "<script>", "a/b", "a:b", "a\nb", "*", "\U0010ffff",
    "\uffff", "\ufffe", "\x01\x02\x03",
]
HOSTILE_INT = [0, -1, 1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64, -2**63 - 1, -2**70, 10**30]
HOSTILE_FLOAT = [0.0, -0.0, 0.5, 1e308, -1e308, 5e-324, 1e-300, 3.14, 2.0000001, 1.5]
OTHER = [True, False, None, [], {}, [None], [1, "a", {}], {"a": None}, [[[]]], {"": ""}, {"\x00": 1}, {"\ud800": 1},
         {"type": "text", "text": "x"}, ["*"]]


@dataclass
class Raw:
    """A token written into the body as it is (not via json.dumps). `ok_codes`: the
    acceptable answers to a body that is not JSON (None: any non-internal answer)."""

    token: bytes
    valid_json: bool
    ok_codes: tuple[int, ...] | None = None


RAW_TOKENS = [
    Raw(b"NaN", False), Raw(b"Infinity", False), Raw(b"-Infinity", False), Raw(b"1e400", True), Raw(b"-1e400", True),
    Raw(b"1" + b"0" * 5000, True), Raw(b"-" + b"9" * 4400, True), Raw(b"1E-400", True), Raw(b"-0", True),
    Raw(b"1.0", True), Raw(b"1e2", True),
    # not UTF-8 inside a string: a parse error, or invalid params naming the field (a UTF-8-encoded lone
    # surrogate is what the contract calls "a string holding a lone surrogate")
    Raw(b'"\xff\xfe"', False, (-32700, -32602)), Raw(b'"\xed\xa0\x80"', False, (-32700, -32602)),
    Raw(b'"\xc0\x80"', False, (-32700, -32602)), Raw(b"01", False), Raw(b"'single'", False), Raw(b"undefined", False),
]


def _has_surrogate(obj: Any) -> bool:
    """Whether the server would see a lone surrogate (a Python str "\\ud83d\\ude00" is a valid
    pair once written as JSON, so look at what the JSON decodes to)."""
    try:
        obj = json.loads(json.dumps(obj))
    except (ValueError, RecursionError):
        pass
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _has_nul(obj: Any) -> bool:
    stack = [obj]
    while stack:
        cur = stack.pop()
        if isinstance(cur, str):
            if "\x00" in cur:
                return True
        elif isinstance(cur, list):
            stack.extend(cur)
        elif isinstance(cur, dict):
            stack.extend(cur.keys())
            stack.extend(cur.values())
    return False


def deep(levels: int, rng: random.Random) -> Any:
    value: Any = rng.choice([1, "x", None])
    for _ in range(levels):
        value = [value] if rng.random() < 0.5 else {"k": value}
    return value


# --- one fuzzed request ----------------------------------------------------------------------


@dataclass
class Case:
    method: str
    params: Any
    kind: str
    path: tuple[Any, ...] | None = None
    raw: list[Raw] = field(default_factory=list)
    msg_id: Any = None
    id_valid: bool = True
    expect_code: int | None = None
    why: str = ""
    ensure_ascii: bool = True
    omit_params: bool = False
    ok_codes: tuple[int, ...] | None = None
    """Other acceptable codes besides `expect_code`."""

    def body(self) -> bytes:
        msg: dict[str, Any] = {"jsonrpc": "2.0", "id": self.msg_id, "method": self.method}
        if not self.omit_params:
            msg["params"] = self.params
        try:
            data = json.dumps(msg, ensure_ascii=self.ensure_ascii).encode("utf-8")
        except UnicodeEncodeError:  # surrogates can only be sent escaped
            data = json.dumps(msg, ensure_ascii=True).encode("utf-8")
        for i, raw in enumerate(self.raw):
            data = data.replace(json.dumps(f"@@RAW{i}@@").encode(), raw.token, 1)
        return data


def short(obj: Any, limit: int = 400) -> str:
    """A readable, bounded repr: long strings and deep/large containers are summarised."""

    def walk(o: Any, depth: int) -> Any:
        if depth > 6:
            return f"<nested {_depth(o)} levels>"
        if isinstance(o, str):
            return o if len(o) <= 80 else f"<str len={len(o)} {o[:12]!r}...>"
        if isinstance(o, list):
            items = [walk(v, depth + 1) for v in o[:6]]
            return items + ([f"<+{len(o) - 6} items>"] if len(o) > 6 else [])
        if isinstance(o, dict):
            return {walk(k, depth + 1): walk(v, depth + 1) for k, v in list(o.items())[:12]}
        return o

    text = repr(walk(obj, 0))
    return text if len(text) <= limit else text[:limit] + "..."


def _depth(o: Any) -> int:
    d = 0
    while isinstance(o, (list, dict)) and o:
        o = o[0] if isinstance(o, list) else next(iter(o.values()))
        d += 1
    return d


class Fuzzer:
    def __init__(self, seed: int, work: Path) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.work = work
        self.ids = itertools.count(1000)
        self.fresh = itertools.count(1)
        self.paths = {name: field_paths(m.params) for name, m in METHODS.items()}
        (work / "a-file.txt").write_text("not a directory")

    # -- values
    def path_value(self) -> tuple[Any, int | None, str]:
        """A hostile path: (value, expected code, why)."""
        w = str(self.work)
        choices: list[tuple[Any, int | None, str]] = [
            (w + "/x\x00y", -32602, "NUL in a path"),
            ("\x00", -32602, "NUL path"),
            ("relative/dir", -32602, "relative path"),
            ("", -32602, "empty path"),
            (".", -32602, "relative path"),
            ("~/x", -32602, "'~' is literal: a relative path"),
            (w + "/" + "n" * 300, -32602, "path component longer than NAME_MAX (the OS refuses it)"),
            ("/" + "a/" * 3000, -32602, "path longer than PATH_MAX (the OS refuses it)"),
            (w + "/\ud800", -32602, "lone surrogate in a path"),
            (w + "/a-file.txt", None, "a file, not a directory"),
            (w + "/does/not/exist", None, "missing directory"),
            (w + "/sp ace/\u00fc\u0308/\U0001f600", None, "unicode path"),
            (w + "/../" + self.work.name, None, "dot-dot inside an absolute path"),
            ("file://" + w, None, "a file URI"),
            (w, None, "the work dir"),
        ]
        return self.rng.choice(choices)

    def value_for(self, kind: str) -> Any:
        rng = self.rng
        r = rng.random()
        if r < 0.004:
            return rng.choice(["a" * (1 << 20), "\u00e9" * (1 << 19), "\x00" * (1 << 20)])
        if r < 0.01:
            return deep(600, rng)
        if r < 0.015:
            return deep(rng.choice([100, 400, 505]), rng)
        if r < 0.02:
            return [rng.choice(OTHER + HOSTILE_INT) for _ in range(rng.choice([1000, 20000]))]
        if r < 0.55:  # a value of the field's own type, but hostile
            pool = {"str": HOSTILE_STR, "literal": HOSTILE_STR, "int": HOSTILE_INT + [1.0, 2.5, True],
                    "float": HOSTILE_FLOAT + HOSTILE_INT, "bool": [0, 1, "true", "false", None, "yes"],
                    "list": [[], [None], [""], ["\x00"], ["\ud800"], [1, 2], [[]], [{}], "*", "a,b"],
                    "object": [{}, [], {"x": 1}, {"\ud800": "v"}, {"": None}, "{}"],
                    "dict": [{}, [], {"x": 1}, {"\ud800": "v"}, {"": None}, "{}", {"k": 2**64}, {"k": -2**70},
                             {"k": 1e308}, {"\x00": "\x00"}]}.get(kind)
            if pool:
                return rng.choice(pool)
        return rng.choice(HOSTILE_STR + HOSTILE_INT + HOSTILE_FLOAT + OTHER)

    # -- valid bases (every nested object present, so only the mutated field is wrong)
    def base(self, method: str) -> dict[str, Any]:
        rng, w = self.rng, str(self.work)
        agent = rng.choice(FIXTURE_AGENTS)
        if method == "agent/create":
            return {"agentId": f"fz-new-{next(self.fresh)}", "templateId": "default",
                    "model": {"provider": "scripted", "model": "m", "baseUrl": "http://127.0.0.1:9", "apiKeyEnv": "FUZZ_KEY",
                              "maxTokens": 100, "temperature": 0.5,
                              "script": [{"text": "hi", "thinking": "t", "toolCalls": [{"name": "todo_read", "input": {}}],
                                          "usage": {"inputTokens": 1, "outputTokens": 1}, "delayMs": 0, "chunks": ["hi"]}],
                              "thinking": {"budgetTokens": 2048}, "timeoutMs": 1000,
                              "retry": {"maxRetries": 0, "baseDelayMs": 0, "maxDelayMs": 0, "jitterFactor": 0}},
                    "systemPrompt": "s", "tools": ["fs_read"],
                    "permission": {"mode": "auto", "allowTools": ["fs_read"], "denyTools": [], "requireApprovalTools": [],
                                   "approvalTimeoutMs": 1000},
                    "sandbox": {"workDir": w, "allowPaths": [w], "enforceBoundary": True},
                    "budget": {"maxCostUsd": 1.0, "maxTokens": 1000}, "metadata": {"k": "v"}}
        if method == "agent/resume":
            return {"agentId": agent, "since": rng.choice([0, 1, 5, 10**9]), "strategy": rng.choice(["crash", "manual"])}
        if method in ("agent/send", "agent/complete"):
            agent = rng.choice(("fz-echo-1", "fz-echo-2", "fz-script"))
            if rng.random() < 0.5:
                return {"agentId": agent, "text": "hello", "kind": "user"}
            blocks = [{"type": "text", "text": "x"}, {"type": "image", "mediaType": "image/png", "data": "iVBORw0KGgo="},
                      {"type": "thinking", "thinking": "t"}, {"type": "tool_result", "toolUseId": "t1", "content": "r", "isError": False},
                      {"type": "tool_use", "id": "t1", "name": "fs_read", "input": {}},
                      {"type": "redacted_thinking", "data": "x"}]
            return {"agentId": agent, "content": [rng.choice(blocks)], "kind": rng.choice(["user", "reminder"])}
        if method == "agent/interrupt":
            return {"agentId": agent, "note": "n"}
        if method == "agent/decide":
            return {"agentId": agent, "approvalId": "apr_nope", "decision": "allow", "note": "n", "remember": False}
        if method in ("agent/status", "store/consistency", "agent/checkpoints"):
            return {"agentId": agent}
        if method == "agent/compact":
            return {"agentId": agent, "instructions": "the plan"}
        if method == "agent/rewind":
            return {"agentId": agent, "checkpointId": "cp_1", "restore": rng.choice(["code", "conversation", "both"]),
                    "dryRun": rng.choice([True, False]), "force": False}
        if method == "agent/list":
            return {"prefix": "fz", "limit": 10}
        if method == "agent/messages":
            return {"agentId": agent, "limit": 5, "before": 3}
        if method == "agent/events":
            return {"agentId": agent, "since": 0, "limit": 5, "channels": ["progress", "monitor"]}
        if method == "agent/fork":
            return {"agentId": agent, "newAgentId": f"fz-fork-{next(self.fresh)}", "atSeq": 1}
        if method == "agent/todos":
            return {"agentId": agent, "todos": [{"id": "1", "title": "t", "status": "pending", "notes": "n"}]}
        if method == "agent/delete":
            return {"agentId": f"fz-gone-{next(self.fresh)}"}
        if method == "initialize":
            return {"protocolVersion": 1, "clientInfo": {"name": "fuzz", "version": "1"}, "processId": os.getpid(),
                    "workspaceFolders": [w], "capabilities": {"approvals": True}}
        return {}

    # -- a case
    def case(self, method: str) -> Case:
        rng = self.rng
        params = self.base(method)
        paths = self.paths[method]
        r = rng.random()
        c: Case
        if r < 0.05 or not paths and r < 0.35:
            bad = rng.choice([[1, 2], "params", 42, True, [[]], [{}], 1.5, [None], ["agentId"], ""])
            c = Case(method, bad, "params_not_object", path=(), expect_code=-32602, why="params must be an object")
        elif r < 0.10:
            extra = {rng.choice(["x", "__proto__", "constructor", "\u00e9", "\x00k", "", "a" * 1000, "x-y"]):
                     self.value_for("any") for _ in range(rng.randint(1, 4))}
            c = Case(method, {**params, **extra}, "extra_keys")
        elif r < 0.13:
            c = Case(method, {**params, "zz": deep(600, rng)}, "deep_600")
        elif r < 0.20 and paths:
            raw = rng.choice(RAW_TOKENS)
            path, kind = rng.choice(paths)
            if kind in ("dict", "any") and rng.random() < 0.5:
                path = path + ("k",)  # inside a free-form object such as metadata: stored and echoed back
            c = Case(method, set_path(params, path, "@@RAW0@@"), "raw_token", path=path, raw=[raw])
            if not raw.valid_json:
                c.expect_code, c.why = -32700, f"{raw.token[:20]!r} is not JSON"
                c.ok_codes = raw.ok_codes
            elif raw.token.lstrip(b"-") == b"1e400" and path[0] != "content":
                # valid JSON, but no double holds it: "a number out of range gets -32602" (section 9),
                # not a silent null or infinity (content.N.* may name another block type's field: ignored)
                c.expect_code, c.why = -32602, "1e400 is a number out of range"
        elif r < 0.24 and paths:
            path, _ = rng.choice(paths)
            c = Case(method, del_path(params, path), "remove_field", path=path)
        elif r < 0.27:
            c = Case(method, params, "odd_id")
            # Any string id is answered as sent (a lone surrogate comes back \u-escaped, valid JSON).
            c.msg_id, c.id_valid = rng.choice([(0, True), (-5, True), (2**64, True), ("", True), ("x" * 1000, True),
                                               ("\x00", True), ("\ud800", True), (1.5, False), (True, False),
                                               ([1], False), ({"a": 1}, False), (None, False)])
            if not c.id_valid:
                c.expect_code, c.why = -32600, "id must be a string or an integer"
        elif r < 0.29:
            c = Case(method, params, "no_params", omit_params=True)
        else:
            path_kind = [(p, k) for p, k in paths if any(seg in PATH_FIELDS for seg in p if isinstance(seg, str))]
            if path_kind and rng.random() < 0.3:
                path, _ = rng.choice(path_kind)
                if path[-1] == "allowPaths" or path[-1] == "workspaceFolders":
                    path = path + (0,)
                value, expect, why = self.path_value()
                c = Case(method, set_path(params, path, value), "path_value", path=path, expect_code=expect, why=why)
            elif paths:
                path, kind = rng.choice(paths)
                value = self.value_for(kind)
                c = Case(method, set_path(params, path, value), "field_value", path=path)
            else:
                c = Case(method, {"x": self.value_for("any")}, "extra_keys")
        if c.msg_id is None and c.kind != "odd_id":
            c.msg_id = next(self.ids)
        c.ensure_ascii = rng.random() < 0.5
        if c.kind not in ("odd_id", "raw_token", "extra_keys") and c.expect_code is None:
            if _has_surrogate(c.params):
                c.expect_code, c.why = -32602, "a lone surrogate is invalid params"
            elif c.path is not None and any(isinstance(s, str) and s in PATH_FIELDS for s in c.path) \
                    and _has_nul(get_path(c.params, c.path)):
                c.expect_code, c.why = -32602, "a path with a NUL byte is refused by the OS"
        return c


# --- checking replies ------------------------------------------------------------------------


@dataclass
class Failure:
    category: str
    detail: str
    case: Case
    reply: dict[str, Any] | None

    def signature(self) -> tuple[Any, ...]:
        err = (self.reply or {}).get("error") or {}
        reason = (err.get("data") or {}).get("reason") if isinstance(err.get("data"), dict) else None
        return (self.category, self.case.method, self.case.kind, _norm(self.case.path), err.get("code"), reason)

    def describe(self) -> str:
        c = self.case
        body = c.body()
        shown = body if len(body) <= 600 else body[:300] + b" ... " + body[-100:]
        reply = json.dumps(self.reply)[:600] if self.reply is not None else "<no reply>"
        return (f"[{self.category}] {c.method} ({c.kind}{' ' + '.'.join(map(str, c.path)) if c.path else ''}): {self.detail}\n"
                f"    params: {short(c.params)}\n    body ({len(body)} bytes): {shown!r}\n    reply: {reply}")


def _norm(path: tuple[Any, ...] | None) -> tuple[Any, ...] | None:
    return None if path is None else tuple("N" if isinstance(p, int) else p for p in path)


ALTERNATIVES = {("text",): ("content",), ("content",): ("text",)}
"""Fields of which one is required (`agent/send`: text or content): naming either is right."""


def _related(field_name: str, path: tuple[Any, ...], alternatives: bool = True) -> bool:
    """Whether an error's `field` names the mutated `path` (or a parent or child of it).
    pydantic's union tags (`list[str]`, `literal['*']`, a block's type) are skipped."""
    if not path:
        return True
    if alternatives and path in ALTERNATIVES and _related(field_name, ALTERNATIVES[path], False):
        return True
    want = [str(p) for p in path]
    got = [s for s in field_name.split(".") if "[" not in s and "'" not in s]
    n = min(len(want), len(got))
    if n == 0:
        return False
    # a discriminated union inserts the block's tag after the index: content.0.text.text
    if got[:n] == want[:n]:
        return True
    trimmed = [s for i, s in enumerate(got) if not (i > 0 and got[i - 1].isdigit() and s not in want)]
    m = min(len(want), len(trimmed))
    return m > 0 and trimmed[:m] == want[:m]


def check(case: Case, reply: dict[str, Any] | None) -> list[Failure]:
    out: list[Failure] = []

    def fail(cat: str, detail: str) -> None:
        out.append(Failure(cat, detail, case, reply))

    if reply is None:
        fail("no_reply", f"no response within {REQUEST_TIMEOUT}s")
        return out
    err = reply.get("error")
    if err is not None:
        code = err.get("code")
        data = err.get("data")
        if code == -32603:
            fail("internal_error", "bad input got -32603")
        if not isinstance(data, dict) or not isinstance(data.get("reason"), str) or not data.get("reason"):
            fail("no_reason", "error without data.reason")
        if code == -32602:
            errors = data.get("errors") if isinstance(data, dict) else None
            if not isinstance(errors, list) or not errors or not all(
                    isinstance(e, dict) and isinstance(e.get("field"), str) and isinstance(e.get("message"), str) for e in errors):
                fail("no_errors", "-32602 without data.errors [{field, message}]")
            elif case.kind in ("field_value", "remove_field", "path_value", "raw_token") and case.path is not None \
                    and not any(_related(e["field"], case.path) for e in errors):
                fail("wrong_field", f"-32602 names {[e['field'] for e in errors]}, not {'.'.join(map(str, case.path))}")
        if case.id_valid and reply.get("id") is None and code != -32700:
            fail("id_lost", f"a request with the valid id {case.msg_id!r} was answered with id null")
        elif case.id_valid and reply.get("id") is not None and reply.get("id") != case.msg_id:
            fail("id_changed", f"reply id {reply.get('id')!r} != sent {case.msg_id!r}")
        elif not case.id_valid and reply.get("id") is not None:
            fail("id_echoed", f"an invalid id {case.msg_id!r} was echoed as {reply.get('id')!r} (expected id null)")
        if code == -32700 and not any(not r.valid_json for r in case.raw):
            fail("valid_json_rejected", "a body that is valid JSON got -32700 (parse error)"
                 + (f"; the value at {'.'.join(map(str, case.path or ()))} was {case.raw[0].token[:24]!r}..." if case.raw else ""))
    if case.expect_code is not None:
        code = err.get("code") if err is not None else None
        if code != case.expect_code and code not in (case.ok_codes or ()):
            fail("wrong_code", f"expected {case.expect_code} ({case.why}), got {code if err else 'a result'}")
    if err is None and "result" in reply:
        model = METHODS[case.method].result
        if model is not None:
            try:
                model.model_validate(reply["result"])
            except ValidationError as exc:
                fail("bad_result", f"result does not match {model.__name__}: {exc.errors()[:2]}")
    return out


# --- the runs ---------------------------------------------------------------------------------


async def spawn_strict(env: dict[str, str], stderr_path: Path) -> StrictClient:
    log = open(stderr_path, "ab")
    try:
        client = await StrictClient.spawn(env=env, stderr=log)
    finally:
        log.close()  # the child holds its own descriptor
    return client  # type: ignore[return-value]


def stderr_problems(path: Path) -> list[str]:
    text = path.read_text(errors="replace") if path.exists() else ""
    lines = text.splitlines()
    bad = []
    for i, line in enumerate(lines):
        if "Traceback" in line or "internal error" in line or "never retrieved" in line:
            bad.append("\n".join(lines[max(0, i - 2): i + 25]))
    return bad


@dataclass
class Report:
    seed: int
    requests: int = 0
    failures: list[Failure] = field(default_factory=list)
    other: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def distinct(self) -> dict[tuple[Any, ...], tuple[Failure, int]]:
        out: dict[tuple[Any, ...], tuple[Failure, int]] = {}
        for f in self.failures:
            sig = f.signature()
            first, n = out.get(sig, (f, 0))
            out[sig] = (first, n + 1)
        return out

    def text(self, examples: int = 3) -> str:
        """Failures grouped by category (and expectation), a few shortest examples each."""
        lines = [f"fuzz seed={self.seed} requests={self.requests} failures={len(self.failures)} "
                 f"distinct={len(self.distinct())} in {self.seconds:.1f}s (rerun: KODE_FUZZ_SEED={self.seed})"]
        groups: dict[tuple[str, str], list[tuple[Failure, int]]] = {}
        for f, n in self.distinct().values():
            groups.setdefault((f.category, f.case.why if f.category == "wrong_code" else ""), []).append((f, n))
        for (cat, why), items in sorted(groups.items()):
            total = sum(n for _, n in items)
            methods = sorted({f.case.method for f, _ in items})
            lines.append(f"== {cat}{' (' + why + ')' if why else ''}: {total} requests, {len(items)} distinct, "
                         f"methods: {', '.join(methods)}")
            for f, n in sorted(items, key=lambda fn: len(fn[0].case.body()))[:examples]:
                lines.append(f"x{n} " + f.describe())
        lines.extend(self.other)
        return "\n".join(lines)


async def _settle_turns(c: RpcClient) -> None:
    """Let turns started by fuzzed sends finish, so the final checks see a quiet server."""
    for agent in FIXTURE_AGENTS:
        try:
            await c.request("agent/complete", {"agentId": agent, "text": "settle"}, timeout=60)
        except Exception:
            pass


async def fuzz_main(seed: int, count: int, env: dict[str, str], work: Path, stderr_path: Path) -> Report:
    report = Report(seed)
    t0 = time.monotonic()
    fz = Fuzzer(seed, work)
    c = await spawn_strict(env, stderr_path)
    try:
        await c.initialize()
        await c.request("agent/create", {"agentId": "fz-echo-1", "model": {"provider": "echo"}})
        await c.request("agent/create", {"agentId": "fz-echo-2", "model": {"provider": "echo"},
                                         "sandbox": {"workDir": str(work)}})
        await c.request("agent/create", {"agentId": "fz-script", "permission": {"mode": "auto"}, "sandbox": {"workDir": str(work)},
                                         "model": {"provider": "scripted", "script": [{"text": f"step {i}"} for i in range(50)]}})
        await c.request("agent/complete", {"agentId": "fz-echo-1", "text": "warm up"})
        methods = sorted(n for n, m in METHODS.items()
                         if m.direction == "client->server" and m.kind == "request" and n not in SKIP_IN_MAIN_LOOP)
        silent = 0
        for i in range(count):
            method = methods[i % len(methods)] if i < len(methods) else fz.rng.choice(methods)
            case = fz.case(method)
            reply = await exchange(c, case.msg_id, case.body(), REQUEST_TIMEOUT)
            report.requests += 1
            report.failures.extend(check(case, reply))
            if reply is None:
                silent += 1
                if c.proc.returncode is not None or silent >= 5:
                    report.other.append(f"stopped after {i + 1} requests: server {'exited' if c.proc.returncode is not None else 'stopped answering'}")
                    break
            else:
                silent = 0
            # clean up what a request created, so the data dir stays small
            if reply is not None and isinstance(reply.get("result"), dict) and case.method in ("agent/create", "agent/fork"):
                new = reply["result"].get("agentId")
                if isinstance(new, str) and new not in FIXTURE_AGENTS:
                    try:
                        res = await c.request("agent/delete", {"agentId": new}, timeout=REQUEST_TIMEOUT)
                        if res != {"deleted": True}:
                            report.other.append(f"cleanup: agent/delete {new!r} -> {res}")
                    except Exception as exc:
                        report.other.append(f"cleanup: agent/delete {new!r} after {case.method} {short(case.params)} failed: {exc!r}")
        # after the run: alive, a normal echo turn works, agents consistent, clean stderr, strict output
        if c.proc.returncode is None:
            await _settle_turns(c)
            try:
                await c.request("agent/create", {"agentId": "fz-final", "model": {"provider": "echo"}}, timeout=30)
                res = await c.request("agent/complete", {"agentId": "fz-final", "text": "still alive"}, timeout=30)
                if res.get("status") != "ok" or res.get("text") != "still alive":
                    report.other.append(f"final echo turn: {res}")
            except Exception as exc:
                report.other.append(f"server not usable after the fuzz run: {exc!r}")
            for agent in FIXTURE_AGENTS + ("fz-final",):
                try:
                    cons = await c.request("store/consistency", {"agentId": agent}, timeout=30)
                    if not cons.get("consistent") or cons.get("issues"):
                        report.other.append(f"store/consistency {agent}: {cons}")
                except Exception as exc:
                    report.other.append(f"store/consistency {agent} failed: {exc!r}")
        else:
            report.other.append(f"server exited with code {c.proc.returncode} during the fuzz run")
        if c.stray:
            report.other.append(f"stray bytes on stdout: {c.stray[:200]!r}")
        for body in c.nonstrict[:5]:
            report.other.append(f"server wrote a body that is not strict JSON (NaN/Infinity): {body!r}")
    finally:
        c.kill()
        await c.wait_exit(5)
    for tb in stderr_problems(stderr_path)[:8]:
        report.other.append("stderr:\n" + tb)
    report.seconds = time.monotonic() - t0
    return report


async def fuzz_initialize(seed: int, count: int, env: dict[str, str], work: Path, stderr_dir: Path) -> Report:
    """`initialize` on un-initialized servers; a success costs a fresh server."""
    report = Report(seed)
    t0 = time.monotonic()
    fz = Fuzzer(seed ^ 0x5EED, work)
    spawned = 0
    budget = 40

    async def fresh() -> StrictClient:
        nonlocal spawned
        spawned += 1
        return await spawn_strict(env, stderr_dir / f"init-{spawned}.stderr")

    c = await fresh()
    try:
        for _ in range(count):
            case = fz.case("initialize")
            reply = await exchange(c, case.msg_id, case.body(), REQUEST_TIMEOUT)
            report.requests += 1
            report.failures.extend(check(case, reply))
            succeeded = reply is not None and "result" in reply
            if succeeded or reply is None or c.proc.returncode is not None:
                if spawned >= budget:
                    break
                c.kill()
                await c.wait_exit(5)
                c = await fresh()
        # processId out of range: either -32602, or the server treats that process as gone and exits (section 1)
        pids = [2**64, 2**31 + 5, -1, 0]
        clients = [await spawn_strict(env, stderr_dir / f"pid-{i}.stderr") for i in range(len(pids))]
        try:
            replies = []
            for cl, pid in zip(clients, pids):
                case = Case("initialize", {"protocolVersion": 1, "processId": pid}, "field_value", path=("processId",),
                            msg_id=1)
                reply = await exchange(cl, 1, case.body(), REQUEST_TIMEOUT)
                report.requests += 1
                report.failures.extend(check(case, reply))
                replies.append((case, reply))
            deadline = time.monotonic() + 6.5
            while time.monotonic() < deadline and any(cl.proc.returncode is None for cl in clients):
                await asyncio.sleep(0.2)
            for cl, (case, reply) in zip(clients, replies):
                if reply is not None and "result" in reply and cl.proc.returncode is None:
                    report.failures.append(Failure(
                        "processId_ignored", "initialize accepted a processId that names no process, and the server "
                        "is still running 6.5 s later (contract: exits within 5 s when processId is gone)", case, reply))
        finally:
            for cl in clients:
                cl.kill()
                await cl.wait_exit(5)
    finally:
        c.kill()
        await c.wait_exit(5)
    for p in sorted(stderr_dir.glob("*.stderr")):
        for tb in stderr_problems(p)[:3]:
            report.other.append(f"stderr of {p.name}:\n" + tb)
    report.seconds = time.monotonic() - t0
    return report


# --- pytest entry points --------------------------------------------------------------------


@pytest.fixture
def fuzz_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    (tmp_path / "data").mkdir()
    env.update(KODE_DATA_DIR=str(tmp_path / "data"), KODE_LOG_DIR=str(tmp_path / "logs"),
               KODE_CONFIG_DIR=str(tmp_path / "config"))
    for key in ("KODE_PROVIDER", "KODE_MODEL", "KODE_MAX_AGENTS"):
        env.pop(key, None)
    return env


@pytest.mark.timeout(max(120, int(FUZZ_COUNT * 0.2)))
async def test_fuzz_every_request_method(fuzz_env: dict[str, str], tmp_path: Path) -> None:
    seed = _seed()
    work = tmp_path / "work"
    work.mkdir()
    report = await fuzz_main(seed, FUZZ_COUNT, fuzz_env, work, tmp_path / "server.stderr")
    print(report.text())
    assert report.requests >= min(FUZZ_COUNT, 100), report.text()
    assert not report.failures and not report.other, report.text()


@pytest.mark.timeout(120)
async def test_fuzz_initialize(fuzz_env: dict[str, str], tmp_path: Path) -> None:
    seed = _seed()
    work = tmp_path / "work"
    work.mkdir()
    logs = tmp_path / "stderr"
    logs.mkdir()
    report = await fuzz_initialize(seed, 150, fuzz_env, work, logs)
    print(report.text())
    assert report.requests >= 20, report.text()
    assert not report.failures and not report.other, report.text()


def _main() -> int:
    seed = int(sys.argv[1]) if len(sys.argv) > 1 else _seed()
    count = int(sys.argv[2]) if len(sys.argv) > 2 else FUZZ_COUNT
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for d in ("data", "work", "logs", "config", "stderr"):
            (root / d).mkdir()
        env = dict(os.environ, KODE_DATA_DIR=str(root / "data"), KODE_LOG_DIR=str(root / "logs"),
                   KODE_CONFIG_DIR=str(root / "config"))
        for key in ("KODE_PROVIDER", "KODE_MODEL", "KODE_MAX_AGENTS"):
            env.pop(key, None)
        main = asyncio.run(fuzz_main(seed, count, env, root / "work", root / "server.stderr"))
        print(main.text())
        init = asyncio.run(fuzz_initialize(seed, 150, env, root / "work", root / "stderr"))
        print(init.text())
    return 1 if (main.failures or main.other or init.failures or init.other) else 0


if __name__ == "__main__":
    sys.exit(_main())
