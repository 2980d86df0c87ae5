"""Render `docs/protocol.md` from the models, so the document cannot drift from the code.

`python -m kode_rpc.protocol.docs > docs/protocol.md`; a test fails when the
committed file differs from what this prints.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from pydantic import BaseModel

from . import agents, approvals, events, system
from .errors import ERRORS
from .methods import METHODS

PREAMBLE = """\
# kode-rpc protocol v1

This page is generated from the pydantic models in `kode_rpc/protocol/`
(`python -m kode_rpc.protocol.docs > docs/protocol.md`; a test keeps it in sync).
The binding contract is `shared/design/protocol.md`; this page adds every field
of every message and the choices kode-rpc makes where the contract is silent.
The machine-readable form is `kode-rpc schema` (JSON Schema 2020-12).

## Transport

- JSON-RPC 2.0 on the server's stdin/stdout, UTF-8. Default framing is the LSP base
  protocol (`Content-Length: N\\r\\n\\r\\n` + N bytes; `N` counts bytes, other headers
  are ignored); `kode-rpc --framing ndjson` reads and writes one JSON object per line.
- Absent `params` and `params: []` mean `{}`; any other non-object `params` is `-32602`.
  Inside params too, `[]` given for an object-typed field (`capabilities`, `metadata`,
  `permission`, ...) means `{}`: Neovim encodes every empty Lua table as `[]`.
- A response carries the request's `id` exactly as sent (`0` and `"0"` differ). An `id`
  that is not a string or an integer (e.g. `true`, `1.5`, `null` on a request) gets
  `-32600` with `id: null`.
- Bodies over 64 MiB are skipped while reading; requests get `-32013` (with the `id` when
  it appears in the first 4 KiB), notifications are dropped with a log line.
- A header block without a valid `Content-Length` gets `-32700` with
  `data.reason = "malformed_header"`, and reading continues after it.
- JSON nested deeper than 512 levels gets `-32600` (`too_deep`).
- stdout carries frames only: at start the server takes its own handle on fd 1 and points
  fd 1 and `sys.stdout` at stderr, so a stray `print` or child process cannot corrupt the
  stream. Logs go to stderr and `kode-rpc.log` in the user log dir (`KODE_LOG_DIR`).
- Requests pipelined behind `initialize` wait until it has been answered and then run in
  arrival order. If `initialize` fails, they get `-32003`.
- Requests run concurrently. Requests that name the same agent and change it
  (`agent/create`, `resume`, `send`, `complete`, `todos` with a list, `delete`) start in
  arrival order, so a pipelined `agent/create` + `agent/send` works without waiting.
  Reads (`agent/status`, `events`, `messages`, `todos`, `config`, `checkpoints`, `fork`'s
  source, `interrupt`, `release`) wait for an earlier request's create, delete, load or
  hibernation of their agent, and `agent/list` for every earlier create or delete, so a
  read never answers from before a request sent ahead of it.

## Choices where the contract is silent

- **Subscriptions.** `agent/create`, `agent/resume`, `agent/send`, `agent/complete`,
  `agent/decide` and `agent/todos` (setting) subscribe the connection to the agent
  before they act. There is no unsubscribe short of `agent/delete`.
- **First event.** `agent/create` emits `state_changed {state: "READY"}` as `seq` 1.
- **Streaming.** `echo` and `scripted` yield to the event loop between words/chunks, so
  each is normally its own `text_chunk`; deltas ready in the same loop tick may be merged
  (never split or reordered; a merged delta stays under 64 KiB).
- **`agent/send`** returns `messageId` = `msg_` + the turn id's suffix. The message joins
  the conversation when its turn starts (a send during a running turn cannot land between
  a `tool_use` and its `tool_result`); until then it is stored with the queued turn.
  `kind: "reminder"` sends the text wrapped in `<system-reminder>...</system-reminder>`
  as a user message.
- **`agent/complete`** maps `done.reason` to `status`: `completed` -> `ok`;
  `interrupted` and `budget_exceeded` -> `interrupted`; `error` and `max_steps` ->
  `error`. `text` is the non-empty texts of the turn's model steps joined by a blank line.
  A failed turn is a result, never a JSON-RPC error: `status: "error"` with `error:
  {type, message, retryable}`; `type` is the provider error type (`-32020` vocabulary),
  `max_steps` for the step limit, or `internal` for the server's own fault.
- **`agent/interrupt`** ends the running turn only; sends queued behind it still run. An
  agent not in memory is not loaded (`{interrupted: false}`). Running tool calls end
  `FAILED` (`errorType: "interrupted"`); calls waiting on approval end `DENIED`.
- **Approvals.** `remember: true` with `allow` puts the tool on the agent's *remembered*
  list, checked after `denyTools` and `allowTools` and before `requireApprovalTools` and
  the mode. It is kept apart from `allowTools` because adding one tool to an empty
  `allowTools` would turn it into a whitelist that denies everything else. `agent/decide`
  takes the same `remember` (an extension), so clients that answer through events can
  offer "Always allow" too. When a decision comes from anywhere but the client's reply
  (timeout, `agent/decide`, interrupt), the outstanding `approval/request` is cancelled
  with `$/cancelRequest`. `permission_required` is sent a moment before its
  `approval/request`; a UI may show the prompt on either. `approval/request` ids are
  strings `kode-...`.
- **Read-only tools** (run without asking in `readonly` mode): `fs_read`, `fs_glob`,
  `fs_grep`, `bash_logs`, `todo_read`, `todo_write` (todos are the agent's own plan and
  change nothing in the workspace).
- **Templates.** `default`: all tools, `readonly` mode. `auto`: all tools, `auto` mode.
  `reader`: read/search tools only. Without `sandbox`, `workDir` is the first
  `initialize.workspaceFolders` entry, else `<dataDir>/workspaces/<agentId>`.
  A turn ends with `done {reason: "max_steps"}` after the template's `maxSteps` (50 for
  the built-ins) model calls.
- **Templates from files** (section 15). `<config dir>/templates/*.toml` (`KODE_CONFIG_DIR`)
  and `<folder>/.kode/templates/*.toml` for each `initialize.workspaceFolders` entry and
  the `workDir` of the `agent/create` (a workDir's own templates serve that create only,
  and are listed when it is a workspace folder); later ones win by `id` (built-in < user
  < workspace folders in order < the workDir). Keys are the `AgentConfig` names,
  camelCase or snake_case; an unknown key is ignored; a numeric `version` is turned into
  a string; a missing `description` is `""`. What the template leaves out is the
  `default` template's (prompt, tools, `readonly` mode, 50 steps) and the server's
  default model. Template `mcpServers` are merged under the call's, by name. An agent
  stores its template resolved (prompt, tools, permission, model, `maxSteps`, context,
  MCP servers) at create; `agent/fork` copies it. Files are read afresh on every
  `templates/list` and `agent/create`; the watch that sends `templates/changed` starts
  after `initialize` and also notices directories that appear later (within ~0.5 s).
- **Project instructions** are appended to the system prompt under a `# Project
  instructions (AGENTS.md)` heading; the file is `stat`ed before every model call and
  re-read when its mtime or size changed; an empty file adds nothing.
- **`file_changed`** comes from a watcher of the workDir (watchfiles, `step` 50 ms,
  `debounce` 100 ms) running while the agent is loaded (started on create/resume/load,
  stopped on hibernate, delete and shutdown); the file tools' own reports are dropped
  while it runs (without watchfiles they are sent, `by: "agent"`). A change counts as the
  agent's when a tool call is executing when its window is reported or ended at most
  300 ms before. Net change per window: a file there now is `added` when only creation
  was seen, else `modified`; a file gone is `deleted` unless it was also created in the
  window (then nothing). Directories are not reported. Ignored paths: any `.git`
  component, and `git check-ignore` (when git is installed and the workDir is in a
  repository; else the top-level `.gitignore`'s patterns, fnmatch, `!` lines ignored).
  `path` uses `/`; the event carries the running turn's id, if any.
- **Tool results** are `{ok, data?, error?, errorType?, retryable?}`. `errorType` values:
  `boundary`, `not_found`, `ambiguous`, `invalid_input`, `binary`, `timeout`,
  `exit_code`, `denied`, `interrupted`, `sealed`, `unknown_tool`, `tool_error`, `io`,
  `unavailable` (an MCP server that is down).
  `tool:output` limits count UTF-8 bytes. Secret values (docs/security.md) in results,
  output and events are replaced by `[REDACTED]`; while secrets are known, the last
  characters of a tool's output stream are held back until more output or the call's end.
- **`fs_glob` / `fs_grep`** refuse a pattern, `cwd` or `path` that leads outside the
  sandbox before any walk (`errorType: "boundary"`). Walks do not descend symlinked
  directories and stop at `limit` / `max_results` or after 10 s, with `truncated: true`
  and a `note` saying why; `agent/interrupt` stops them at once. File tools open what
  they checked by descriptor, never following a symlink swapped in afterwards.
- **Agent state after a crash** follows from what is stored: an agent with pending
  approvals is `PAUSED` at `AWAITING_APPROVAL` (also while a sibling call of the same
  step runs) until every one is answered. `store/consistency` does not count a
  `tool_use` of a turn that has not ended as missing its result (a step's results are
  appended together when its last call ends).
- **Bad input.** Params are checked once, before their model: a NUL byte or a lone
  surrogate in any string (keys too) is `-32602` with `reason: "invalid_string"` naming
  the field; a number no field can hold (`1e400`, thousands of digits) is `-32602`
  naming the field; `NaN` and `Infinity` are not JSON (`-32700`). Paths must be
  absolute, under 4096 bytes, with no component over 255 bytes.
- **Usage.** `echo` and `scripted` estimate tokens at 4 characters a token unless a
  script step gives `usage`; their `costUsd` is 0. `budget.maxTokens` is exceeded when
  input + output tokens go *over* it; tool calls of that last step are not run (their
  results say so).
- **Crash recovery.** Loading an agent for any request other than `agent/resume` applies
  the `crash` strategy and emits `agent_resumed` when it found unfinished work.
  `strategy: "manual"` leaves a turn without pending approvals stalled until
  `agent/interrupt` (which seals its calls and ends it); queued turns wait behind it. A
  turn paused on approvals continues once answered, whatever the strategy. Sealed calls
  get `errorType: "sealed"`. Events emitted while a resume replays are sent after the
  replay, never twice.
- **Graceful shutdown** interrupts running turns, except a turn whose only open work is
  waiting on approvals: it stays pending in the store, exactly as after a crash, and its
  approvals are re-issued with the same ids after the next `agent/resume`.
- **Pool.** When every agent in memory is busy and another must load, the request gets
  `-32001` (`pool_full`, `retryable: true`). Hibernation kills the agent's background
  shells. `pool/stats.hibernated` counts agents this process hibernated that are not
  back in memory.
- **Leases** last 30 s and are renewed every 10 s while the agent is in memory; a lease
  whose holder pid is gone on the same host is taken over at once. `-32012` carries
  `data.owner: {pid, host}` (and, as before, `data.pid` and `data.host`).
- **`agent/fork`** copies messages up to the event at `atSeq` (all when absent), todos and
  events `<= atSeq` under the new id (their `seq` numbers kept); the copy is not loaded
  into memory. Without `atSeq` the `scripted` position is copied too.
- **`agent/list`** pages by id; `nextCursor` is the last id of the page when more follow.
- **`agent/messages`** returns the last `limit` messages with `index < before`; `total`
  counts all of the agent's messages.
- **`metrics/prometheus`** exposes `kode_agents_total`, `kode_agents_active`,
  `kode_agents_working`, `kode_tokens_total{kind}`, `kode_errors_total{phase}`,
  `kode_turns_total{reason}` and the histogram `kode_tool_duration_seconds`, written by
  `prometheus-client` (values as floats, `1.0`; no `_created` series); `contentType` is its
  `CONTENT_TYPE_LATEST`, `text/plain; version=1.0.0; charset=utf-8`. The text is exactly
  what `GET /metrics` serves. When the store cannot count its agents it is `-32001`
  (`store_unavailable`).
- **`--http [HOST:]PORT`** (section 11), also `kode-rpc acp --http` and `[http] listen` in
  `config.toml` (a string, or a bare port number); the flag wins. Host default
  `127.0.0.1`; IPv6 in brackets (`[::1]:9464`). `GET /health`: the `store/health` JSON,
  200 when `healthy`, else 503. `GET /ready`: empty body, 200 when the server has started,
  is not shutting down and `database.connected`, else 503. `GET /metrics`: the
  `metrics/prometheus` text with its `contentType`; 503 `store unavailable: ...` when the
  store cannot count its agents. `HEAD` is `GET` without the body; other methods on these
  paths are 405 with `Allow: GET, HEAD`; other paths 404; a query string is ignored.
  Every response carries `Connection: close` and `Cache-Control: no-store`. A request
  head over 8 KiB is 431, one not complete within 10 s is 408, anything else that is not
  an HTTP/1.0 or 1.1 request is 400; past 64 open connections a new one gets 503. The
  port is bound before the store is opened: one that cannot be bound is exit 1 with
  `--http: cannot listen on HOST:PORT: <reason>` on stderr; a bad `[http] listen` is exit
  1 too, a bad `--http` a usage error (exit 2). The bound address is logged at start
  (INFO, stderr and the log file, never stdout) as `http: listening on
  http://127.0.0.1:PORT`: with port 0 that line tells the port.
- **Providers** are configured as `docs/providers.md` says; `ModelConfig` adds `thinking`,
  `timeoutMs` and `retry` to the contract's fields, `ThinkingBlock` carries Anthropic's
  `signature`, and a `redacted_thinking` content block keeps Anthropic's encrypted
  thinking (never shown as an event) so it can be sent back as the API requires. Besides
  the contract's provider error types, `type` may be `connection`, `invalid_request` or
  `invalid_response`.
- **Checkpoints** (section 14). Ids are `cp_1`, `cp_2`, ... per agent. The snapshot is
  taken right before the first call of a tool that may change files actually runs (after
  its approval), so a turn whose such calls are all denied takes none; concurrent calls
  of the step wait for it. A snapshot that fails (e.g. the workDir is gone) is reported
  as an `error` event (`severity: "warn"`) and the call runs anyway. `turn_diff` comes
  after the turn's last `state_changed` and before its `done`, also for a turn that crash
  recovery ends or continues (from the checkpoint the dead process took; none is taken
  twice for a turn). A file that grows over 10 MiB during a turn shows as
  `deleted` in its `turn_diff`. Conflicts are files a rewind would touch that differ
  from the state at the end of the agent's last checkpointed turn (or its last rewind).
  `restored: true` whenever a rewind was carried out (not a dry run, not blocked), also
  when it had nothing to change; `rewound` is sent before the response. An unknown
  `checkpointId` is `-32002` (`checkpoint_not_found`); a rewind while a turn runs or is
  queued is `-32602` (`agent_busy`). A conversation rewind marks every message from the
  checkpoint's `messageIndex` to the current end `rewound: true` (kept in the agent's
  runtime state, copied by `agent/fork`); later messages are in the context again.
  Nested git repositories inside the workDir are recorded as gitlinks (not their files).
- **MCP servers** (`docs/mcp.md`): a server connects in the background when its agent is
  loaded (`mcp_status` `connecting`, then `ready` or `failed`); a model step waits until
  no server is still connecting (each is bounded by `startupTimeoutMs`, default 30 s). An
  entry with a `url` and no `type` is `http` (Cursor's shape); `timeoutMs` and
  `startupTimeoutMs` are extensions. `agent/resume` reconnects servers that failed or
  stopped. A call to a server that is down ends `FAILED` with `errorType: "unavailable"`;
  `isError: true` is `tool_error`; a timeout is `timeout`. A result with images has
  `data` = the content as blocks (`text`, `image`), else the text joined by newlines.
  `agent/status` of an agent not in memory lists its servers as `closed`.
- **Context compression** (section 13). The estimate's base is the previous call's
  reported prompt (`inputTokens` plus cache tokens); a rewind since then falls back to
  counting the whole prompt (system prompt, tool specs, context) at 4 characters a token.
  The summary call gets the older messages as one plain-text transcript (no tools), the
  todo list and the `instructions`; its `token_usage` is emitted and counted in the
  agent's usage; its text is not streamed (it is in the `end` event). `ratio` compares
  the prompt counted at 4 characters a token after and before. The summary is stored as
  a `user` message (`kind: "summary"`, one text block headed `[Summary of the earlier
  conversation, ...]`, with the todo list appended) and sent first in the context; which
  messages it replaced is kept in the agent's runtime state (copied by `agent/fork`). A
  later compression summarises the earlier summary too (it is then `compacted`); a
  rewind to before a summary brings the messages it replaced back. Nothing to summarise
  (only the kept suffix and the latest user message) gives `compressed: false` and no
  events; a failed summary call gives an `error` event (`severity: "warn"`), `end` with
  `compactedMessages: 0`, and the model call goes ahead with the whole context.
  `agent/compact` waits for the running and queued turns (a turn sent meanwhile starts
  after it) and answers after its events are stored.
- `initialize.capabilities.acp` is `true`: this build serves ACP as its own mode
  (`kode-rpc acp`), not on the kode protocol's connection.

## ACP mode (`kode-rpc acp`): choices where section 10 is silent

- Built on the official Python SDK (`agent-client-protocol` 0.12) for dispatch and the
  schema types; framing is the server's own (lines up to 64 MiB; a line that is not JSON
  is `-32700`, a JSON value that is not an object `-32600`, both with `id: null`).
  `_meta` keys that could name a parameter (identifiers other than `kode`) are dropped
  before dispatch, so `_meta` cannot replace `cwd` or `sessionId`.
- The session id is the agent id. `session/new` takes `_meta.kode.{model, permission,
  templateId, systemPrompt, tools, budget}`; without them the server's default model and
  the `default` template (`readonly` mode) apply. `additionalDirectories` become
  `sandbox.allowPaths`.
- Model option values are `provider/model` (`echo/echo`, `anthropic/claude-sonnet-4-5`);
  the list holds `echo`, a cloud provider's known models when its key is set (or its
  configured model), the configured default, and the current one. Changing provider
  starts from that provider's defaults; the same provider keeps `baseUrl` and the rest.
- Permission options are `allow_once`, `allow_always` (= `remember`: that tool runs
  without asking for this agent from then on), `reject_once`, `reject_always` (this call
  is denied; nothing is remembered). `{outcome: "cancelled"}` denies the call.
- Tool calls: `tool_call` (status `pending`) when the model asks for one; `in_progress`
  when it is allowed or produces output; `completed` / `failed` with the result as text
  content and, for `fs_write`, `fs_edit`, `fs_multi_edit`, a whole-file `diff` per file
  changed (`oldText` left out for a new file; files over 1 MiB get no diff). `todo_*`
  calls have kind `think`, MCP tools `other`.
- `usage_update.used` is the last model call's input + output + cache tokens; `size`
  the model's context window from the model table; `cost` the session's cumulative cost.
- Stop reasons: `completed` -> `end_turn`, `interrupted` -> `cancelled`,
  `budget_exceeded` -> `max_tokens`, `max_steps` -> `max_turn_requests`. A turn that
  fails on the provider answers the prompt with error `-32020` (`data: {type, message,
  retryable}`). Other errors: unknown session `-32002`; bad params `-32602`; agent run
  by another process `-32012`; overloaded `-32001`.
- `session/load` replays user and agent messages, thoughts, every tool call in its final
  state and the plan, then answers; re-issued approvals (after a crash) follow the
  response. `session/resume` re-attaches without replay. Both connect the `mcpServers`
  they carry: each is added to the session's servers or replaces the one of that name,
  and is stored; servers left out stay (docs/mcp.md). `session/list` pages by 50
  (`nextCursor` is an offset). `session/close` lets an idle agent hibernate.
- stdin EOF (and SIGTERM/SIGINT) interrupts running turns, lets their prompts answer
  `cancelled` (up to 1.5 s), keeps pending approvals, and exits 0.
"""



def _type(prop: dict[str, Any]) -> str:
    if "$ref" in prop:
        return prop["$ref"].split("/")[-1]
    if "const" in prop:
        return f'"{prop["const"]}"'
    if "enum" in prop:
        return " \\| ".join(f'"{v}"' for v in prop["enum"])
    if "anyOf" in prop or "oneOf" in prop:
        parts = [_type(p) for p in prop.get("anyOf", prop.get("oneOf", [])) if p.get("type") != "null"]
        return " \\| ".join(parts) or "null"
    t = prop.get("type")
    if t == "array":
        return f"[{_type(prop.get('items', {}))}]"
    if t == "object" or t is None:
        return "object" if t else "any"
    return {"integer": "int", "number": "number", "string": "string", "boolean": "bool"}.get(t, str(t))


def _fields(model: type[BaseModel]) -> str:
    schema = model.model_json_schema(by_alias=True, mode="serialization", ref_template="{model}")
    props = schema.get("properties", {})
    if not props:
        return "_no fields_\n"
    required = set(schema.get("required", []))
    rows = ["| field | type | required | default |", "|---|---|---|---|"]
    for name, prop in props.items():
        default = prop.get("default", "")
        default_text = "" if name in required or "default" not in prop else f"`{json.dumps(default)}`"
        rows.append(f"| `{name}` | {_type(prop)} | {'yes' if name in required else ''} | {default_text} |")
    return "\n".join(rows) + "\n"


def _models() -> list[type[BaseModel]]:
    seen: list[type[BaseModel]] = []
    for module in (system, agents, approvals, events):
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, BaseModel) and value.__module__ == module.__name__:
                if value not in seen and value.__name__ != "WireModel":
                    seen.append(value)
    return seen


def render() -> str:
    out = [PREAMBLE, "## Methods\n"]
    out.append("| method | direction | kind | params | result | what it does |")
    out.append("|---|---|---|---|---|---|")
    for m in METHODS.values():
        result = m.result.__name__ if m.result else "null"
        out.append(f"| `{m.name}` | {m.direction} | {m.kind} | {m.params.__name__} | {result} | {m.summary} |")
    out.append("\n## Errors\n")
    out.append("Every error has `data.reason`.\n")
    out.append("| code | meaning | `data.reason` values |")
    out.append("|---|---|---|")
    for spec in ERRORS:
        out.append(f"| `{spec.code}` | {spec.meaning} | {', '.join(spec.reasons)} |")
    out.append("\n## Events\n")
    out.append("`agent/event` params are an `EventEnvelope`; `event` is one of the types below, on the channel shown.\n")
    out.append("| type | channel | model |")
    out.append("|---|---|---|")
    for model in events.Event.__args__[0].__args__:  # type: ignore[attr-defined]
        etype = model.model_fields["type"].default
        out.append(f"| `{etype}` | {events.channel_of(etype)} | {model.__name__} |")
    out.append("\n## Types\n")
    for model in _models():
        doc = (model.__doc__ or "").strip().splitlines()
        out.append(f"### {model.__name__}\n")
        if doc and not doc[0].startswith(("Usage docs", "!!!", "A base class")):
            out.append(doc[0] + "\n")
        out.append(_fields(model))
    return "\n".join(out)


if __name__ == "__main__":
    sys.stdout.write(render())
