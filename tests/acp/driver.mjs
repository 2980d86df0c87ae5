#!/usr/bin/env node
/**
 * kode-acp-driver: drive an ACP agent with the official ACP TypeScript SDK
 * (@agentclientprotocol/sdk 2.x, stable v1 entrypoint) from a JSON script, then print a
 * JSON transcript on stdout. Made for pytest: spawn `kode-rpc acp`, run steps, assert on
 * the transcript.
 *
 * Usage
 *   node driver.mjs [options] -- <agent command> [args...]
 *   echo '[{"op":"initialize"},{"op":"newSession","cwd":"/tmp"}]' | node driver.mjs -- kode-rpc acp
 *
 * Options
 *   --script FILE          JSON script (default: stdin; "-" = stdin)
 *   --timeout MS           whole run (default 60000); on expiry the agent is killed and the
 *                          transcript has "timedOut": true (exit code 2)
 *   --step-timeout MS      default per-request timeout (default 30000)
 *   --exit-timeout MS      after the script, stdin is closed (EOF) and the driver waits this
 *                          long for the agent to exit before SIGKILL (default 5000)
 *   --cwd DIR              agent's working directory; also the default `cwd` of steps
 *   --env K=V              extra environment variable for the agent (repeatable)
 *   --stderr-passthrough   also copy the agent's stderr to the driver's stderr
 *   --max-message-bytes N  ndJsonStream line limit (SDK default 32 MiB)
 *   --no-validate          skip JSON-Schema validation against the SDK's schema/v1/schema.json
 *   --pretty               indent the transcript
 *   --out FILE             write the transcript to FILE instead of stdout
 *   --version              print driver + SDK versions and exit
 *
 * Script: a JSON array of steps (or {"steps": [...]}). Every step is {"op": ..., ...}. Any
 * string value "$last" becomes the last session id from newSession, "$<name>" the session
 * id saved by a newSession with "as": "<name>", "$init" the initialize result (other
 * strings starting with "$" are sent as they are). Optional on every step: "label",
 * "timeoutMs" (default --step-timeout); on request steps "_meta" (sent as params._meta).
 *
 *   initialize       {protocolVersion?=1, clientCapabilities?, clientInfo?}
 *   newSession       {cwd?, mcpServers?=[], additionalDirectories?, as?}
 *   loadSession      {sessionId?="$last", cwd?, mcpServers?=[]}
 *   resumeSession    {sessionId?="$last", cwd?, mcpServers?}
 *   closeSession     {sessionId?="$last"}
 *   listSessions     {cwd?, cursor?}
 *   setMode          {sessionId?="$last", modeId}
 *   setConfigOption  {sessionId?="$last", configId, value, type?}
 *   prompt           {sessionId?="$last", text | prompt:[ContentBlock], wait?=true, as?}
 *                    wait:false runs it in the background under the name "as" (finish it
 *                    with "wait"); the step record is completed when its response arrives
 *   wait             {name} | {all: true}       await background prompt(s)
 *   cancel           {sessionId?="$last", answerPending?=true}   session/cancel notification;
 *                    pending permission requests of that session are answered "cancelled"
 *   cancelAfterMs    {ms, sessionId?="$last", answerPending?=true}  schedule a cancel, return
 *   permissionPolicy {answer, delayMs?=0, queue?:[answer...]}  how to answer
 *                    session/request_permission: allow_once | allow_always | reject_once |
 *                    reject_always (picks the option of that kind), cancelled, never (stay
 *                    pending until a cancel step / $/cancel_request), error (JSON-RPC error).
 *                    "queue" answers are used first, one per request. Default: allow_once.
 *   waitFor          {sessionUpdate? | method?, sessionId?, count?=1, since?="lastPrompt"|"start"|"step",
 *                    timeoutMs?}  wait until that many matching messages from the agent arrived
 *   sleep            {ms}
 *   request          {method, params?}    any request (extension methods, bad params, ...)
 *   notify           {method, params?}    any notification
 *   raw              {line}               write one raw line (not via the SDK) to the agent
 *   closeStdin       {}                   EOF now (the end of the script does it otherwise)
 *   waitExit         {timeoutMs?=5000}    wait for the agent process to exit
 *   kill             {signal?="SIGKILL"}
 *
 * Transcript (stdout, one JSON document)
 *   messages[]  every line on the wire in order: {seq, t, dir:"in"|"out", msg} ("in" = from
 *               the agent, "out" = written by the SDK, including its own -32700 answers to
 *               non-JSON lines); a stdout line that is not JSON is {dir:"in", noise}; a raw
 *               step is {dir:"out", raw}; stdin EOF is {dir:"out", eof:true}.
 *               t = ms since the driver started (monotonic clock).
 *   steps[]     {i, op, label?, t, tEnd, method?, id?, params?, reqSeq?, respSeq?, ok,
 *               result? | error?}. result/error are the agent's raw JSON-RPC response (the
 *               SDK would turn -32002 to session/close into {}); a driver-side failure is
 *               {code: null, message, timeout?}. prompt and loadSession steps add
 *               `updates` (session/update .update objects of that session between request
 *               and response) and `lateUpdates` (after the response, up to our next request
 *               about that session).
 *   permissions[] {t, seq, sessionId, toolCallId, options, answer (policy), answered,
 *               optionId?, tAnswer, note?}
 *   schemaErrors[] {seq, def, errors} messages that fail the official JSON schema
 *   sdkLog[]    what the SDK reported via console.error (e.g. updates it rejected)
 *   stderr      the agent's stderr;  exit {code, signal, t, afterEofMs?, killed?}
 *   timedOut, driverErrors[], vars, durationMs
 *
 * Exit code: 0 when the script ran to its end (even if steps got errors: assert on the
 * transcript), 1 bad usage or script, 2 timeout or driver failure (transcript still printed).
 *
 * From pytest (after tests/acp/ci.sh has run `npm ci`):
 *   script = [{"op": "initialize"}, {"op": "newSession", "cwd": str(tmp_path)},
 *             {"op": "prompt", "text": "hi"}]
 *   p = subprocess.run(["node", "tests/acp/driver.mjs", "--", sys.executable, "-m",
 *                       "kode_rpc", "acp", "--data-dir", str(tmp_path / "data")],
 *                      input=json.dumps(script), capture_output=True, text=True, timeout=90)
 *   t = json.loads(p.stdout)
 *   assert t["steps"][2]["result"]["stopReason"] == "end_turn" and not t["schemaErrors"]
 */
import { spawn } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { performance } from "node:perf_hooks";
import { PassThrough, Readable, Writable } from "node:stream";
import * as acp from "@agentclientprotocol/sdk";

const require = createRequire(import.meta.url);
const DRIVER_VERSION = require("./package.json").version;
// package.json is not in the SDK's "exports"; the schema is, and sits two levels below it
const SDK_SCHEMA_PATH = require.resolve("@agentclientprotocol/sdk/schema/v1/schema.json");
const SDK_VERSION = JSON.parse(readFileSync(join(dirname(SDK_SCHEMA_PATH), "..", "..", "package.json"), "utf8")).version;

// ---------------------------------------------------------------- arguments
function usage(msg) {
  process.stderr.write(`driver.mjs: ${msg}\nusage: node driver.mjs [options] -- <command> [args...]\n`);
  process.exit(1);
}

const opts = {
  script: "-", timeout: 60000, stepTimeout: 30000, exitTimeout: 5000, cwd: undefined,
  env: {}, stderrPassthrough: false, maxMessageBytes: undefined, validate: true,
  pretty: false, out: undefined,
};
const argv = process.argv.slice(2);
let command = [];
for (let i = 0; i < argv.length; i++) {
  const a = argv[i];
  const val = () => {
    if (i + 1 >= argv.length) usage(`${a} needs a value`);
    return argv[++i];
  };
  const num = () => {
    const n = Number(val());
    if (!Number.isFinite(n) || n < 0) usage(`${a} needs a non-negative number`);
    return n;
  };
  if (a === "--") { command = argv.slice(i + 1); break; }
  else if (a === "--script") opts.script = val();
  else if (a === "--timeout") opts.timeout = num();
  else if (a === "--step-timeout") opts.stepTimeout = num();
  else if (a === "--exit-timeout") opts.exitTimeout = num();
  else if (a === "--cwd") opts.cwd = val();
  else if (a === "--env") {
    const kv = val(); const eq = kv.indexOf("=");
    if (eq <= 0) usage("--env needs K=V");
    opts.env[kv.slice(0, eq)] = kv.slice(eq + 1);
  }
  else if (a === "--stderr-passthrough") opts.stderrPassthrough = true;
  else if (a === "--max-message-bytes") opts.maxMessageBytes = num();
  else if (a === "--no-validate") opts.validate = false;
  else if (a === "--pretty") opts.pretty = true;
  else if (a === "--out") opts.out = val();
  else if (a === "--version") {
    process.stdout.write(JSON.stringify({ driver: DRIVER_VERSION, sdk: SDK_VERSION, node: process.version }) + "\n");
    process.exit(0);
  }
  else usage(`unknown option ${a}`);
}
if (command.length === 0) usage("missing agent command after --");

let steps;
try {
  const text = opts.script === "-" ? readFileSync(0, "utf8") : readFileSync(opts.script, "utf8");
  const parsed = JSON.parse(text);
  steps = Array.isArray(parsed) ? parsed : parsed?.steps;
  if (!Array.isArray(steps) || !steps.every((s) => s && typeof s.op === "string")) {
    throw new Error("script must be an array of {op: ...} steps (or {steps: [...]})");
  }
} catch (e) {
  usage(`bad script: ${e.message}`);
}

// ---------------------------------------------------------------- transcript state
const T0 = performance.now();
const now = () => Math.round((performance.now() - T0) * 1000) / 1000;
const transcript = {
  driver: { version: DRIVER_VERSION, sdk: SDK_VERSION, node: process.version },
  command,
  steps: [],
  messages: [],
  permissions: [],
  schemaErrors: [],
  sdkLog: [],
  driverErrors: [],
  stderr: "",
  exit: null,
  timedOut: false,
  vars: {},
  durationMs: 0,
};
let seq = 0;
const vars = transcript.vars;
const defaultCwd = opts.cwd ?? process.cwd();

// The SDK reports rejected notifications etc. via console.error: keep them.
const origConsoleError = console.error.bind(console);
console.error = (...args) => {
  transcript.sdkLog.push({ t: now(), text: args.map((a) => (typeof a === "string" ? a : safeJson(a))).join(" ") });
  origConsoleError(...args);
};
function safeJson(v) {
  try { return JSON.stringify(v); } catch { return String(v); }
}

// ---------------------------------------------------------------- schema validation
let validators = null;
if (opts.validate) {
  try {
    const Ajv2020 = require("ajv/dist/2020.js").default;
    const schema = JSON.parse(readFileSync(SDK_SCHEMA_PATH, "utf8"));
    const ajv = new Ajv2020({ strict: false, allErrors: true, validateFormats: false });
    ajv.addSchema(schema, "acp.json");
    const cache = new Map();
    validators = (def) => {
      if (!cache.has(def)) cache.set(def, schema.$defs?.[def] ? ajv.getSchema(`acp.json#/$defs/${def}`) : null);
      return cache.get(def);
    };
  } catch (e) {
    transcript.driverErrors.push({ t: now(), error: `schema validation disabled: ${e.message}` });
  }
}
// result schemas of agent methods, params schemas of client methods (what the agent sends)
const RESULT_DEF = {
  initialize: "InitializeResponse", authenticate: "AuthenticateResponse",
  "session/new": "NewSessionResponse", "session/load": "LoadSessionResponse",
  "session/list": "ListSessionsResponse", "session/resume": "ResumeSessionResponse",
  "session/close": "CloseSessionResponse", "session/delete": "DeleteSessionResponse",
  "session/set_mode": "SetSessionModeResponse", "session/set_config_option": "SetSessionConfigOptionResponse",
  "session/prompt": "PromptResponse", logout: "LogoutResponse",
};
const PARAMS_DEF = {
  "session/update": "SessionNotification", "session/request_permission": "RequestPermissionRequest",
  "fs/read_text_file": "ReadTextFileRequest", "fs/write_text_file": "WriteTextFileRequest",
  "terminal/create": "CreateTerminalRequest", "terminal/output": "TerminalOutputRequest",
  "terminal/release": "ReleaseTerminalRequest", "terminal/wait_for_exit": "WaitForTerminalExitRequest",
  "terminal/kill": "KillTerminalRequest",
};
function check(entry, def, value) {
  const v = validators?.(def);
  if (!v || v(value)) return;
  transcript.schemaErrors.push({ seq: entry.seq, def, errors: (v.errors ?? []).slice(0, 5) });
}

// ---------------------------------------------------------------- message log + waiters
const outRequests = new Map(); // JSON-RPC id we sent -> {method, step}
const awaitingId = []; // steps waiting to learn the id of their request, FIFO per method
const messageListeners = new Set();

function recordIn(line) {
  const entry = { seq: ++seq, t: now(), dir: "in" };
  let msg;
  try { msg = JSON.parse(line); } catch { /* fallthrough */ }
  if (msg === undefined || msg === null || typeof msg !== "object" || Array.isArray(msg)) {
    entry.noise = line;
    transcript.messages.push(entry);
    return;
  }
  entry.msg = msg;
  transcript.messages.push(entry);
  if (typeof msg.method === "string") {
    const def = PARAMS_DEF[msg.method];
    if (def) check(entry, def, msg.params);
  } else if ("id" in msg) {
    const req = outRequests.get(msg.id);
    if (req && "result" in msg && RESULT_DEF[req.method]) check(entry, RESULT_DEF[req.method], msg.result);
  }
  for (const l of messageListeners) l(entry);
}

function recordOut(msg) {
  const entry = { seq: ++seq, t: now(), dir: "out", msg };
  transcript.messages.push(entry);
  if (typeof msg.method === "string" && "id" in msg) {
    const k = awaitingId.findIndex((w) => w.method === msg.method);
    const step = k >= 0 ? awaitingId.splice(k, 1)[0].step : undefined;
    outRequests.set(msg.id, { method: msg.method, step });
    if (step) { step.id = msg.id; step.reqSeq = entry.seq; }
  }
  return entry;
}

// ---------------------------------------------------------------- spawn the agent
const child = spawn(command[0], command.slice(1), {
  cwd: opts.cwd,
  env: { ...process.env, ...opts.env },
  stdio: ["pipe", "pipe", "pipe"],
});
let exited = false;
let eofAt = null;
const exitPromise = new Promise((resolve) => {
  child.on("exit", (code, signal) => {
    exited = true;
    transcript.exit = { code, signal, t: now() };
    if (eofAt !== null) transcript.exit.afterEofMs = Math.round((now() - eofAt) * 1000) / 1000;
    resolve();
  });
});
child.on("error", (e) => {
  transcript.driverErrors.push({ t: now(), error: `spawn: ${e.message}` });
  exited = true;
  transcript.exit = { code: null, signal: null, t: now(), spawnError: e.message };
});
child.stdin.on("error", (e) => transcript.driverErrors.push({ t: now(), error: `agent stdin: ${e.code ?? e.message}` }));
child.stderr.setEncoding("utf8");
child.stderr.on("data", (d) => {
  transcript.stderr += d;
  if (opts.stderrPassthrough) process.stderr.write(d);
});

// Our own line splitter sees every byte of the agent's stdout (noise included); the same
// bytes go on to the SDK's ndJsonStream through a PassThrough.
const sdkInput = new PassThrough();
let pending = Buffer.alloc(0);
child.stdout.on("data", (chunk) => {
  let buf = pending.length ? Buffer.concat([pending, chunk]) : chunk;
  let nl;
  while ((nl = buf.indexOf(0x0a)) !== -1) {
    const line = buf.subarray(0, nl).toString("utf8").replace(/\r$/, "");
    buf = buf.subarray(nl + 1);
    if (line.trim()) recordIn(line);
  }
  pending = Buffer.from(buf);
  sdkInput.write(chunk);
});
child.stdout.on("end", () => {
  if (pending.length && pending.toString("utf8").trim()) recordIn(pending.toString("utf8"));
  pending = Buffer.alloc(0);
  sdkInput.end();
});

// Outgoing bytes are recorded too: ndJsonStream writes one whole line per write(), and some
// lines (its -32700 answer to a non-JSON line from the agent) never pass the message layer.
const stdinWeb = Writable.toWeb(child.stdin);
const decoder = new TextDecoder();
const tappedStdin = new WritableStream({
  async write(chunk) {
    for (const line of decoder.decode(chunk).split("\n")) {
      if (!line.trim()) continue;
      let msg;
      try { msg = JSON.parse(line); } catch { msg = undefined; }
      if (msg && typeof msg === "object") recordOut(msg);
      else transcript.messages.push({ seq: ++seq, t: now(), dir: "out", raw: line });
    }
    const w = stdinWeb.getWriter();
    try { await w.write(chunk); } finally { w.releaseLock(); }
  },
  async close() {
    const w = stdinWeb.getWriter();
    try { await w.close(); } finally { w.releaseLock(); }
  },
});
const sdkStream = acp.ndJsonStream(tappedStdin, Readable.toWeb(sdkInput),
  opts.maxMessageBytes ? { maxMessageBytes: opts.maxMessageBytes } : undefined);

// ---------------------------------------------------------------- permission handling
const policy = { answer: "allow_once", delayMs: 0, queue: [] };
const pendingPermissions = new Map(); // sessionId -> Set<() => void> (answer "cancelled" now)

async function handlePermission({ params, signal, requestId }) {
  const answer = policy.queue.length ? policy.queue.shift() : policy.answer;
  const rec = {
    t: now(), sessionId: params.sessionId, toolCallId: params.toolCall?.toolCallId,
    options: params.options?.map((o) => ({ optionId: o.optionId, kind: o.kind })), answer,
  };
  const inMsg = transcript.messages.find((m) => m.dir === "in" && m.msg?.method === "session/request_permission" && m.msg.id === requestId);
  if (inMsg) rec.seq = inMsg.seq;
  transcript.permissions.push(rec);
  const cancelled = { outcome: { outcome: "cancelled" } };
  // Already on the wire when we cancelled that session (the SDK dispatches a little later
  // than our splitter records): it was pending at the cancel, so it gets "cancelled".
  const c = cancelledAt.get(params.sessionId);
  if (c !== undefined && rec.seq !== undefined && rec.seq < c && answerPendingOnCancel.get(params.sessionId) !== false) {
    rec.answered = "cancelled"; rec.tAnswer = now(); rec.note = "pending at session/cancel";
    return cancelled;
  }

  // wait (delay or "never") but give up with "cancelled" on a cancel step / $/cancel_request
  const waitUnlessCancelled = (ms) => new Promise((resolve) => {
    let set = pendingPermissions.get(params.sessionId);
    if (!set) pendingPermissions.set(params.sessionId, (set = new Set()));
    let timer;
    const done = (wasCancelled) => {
      set.delete(onCancel); clearTimeout(timer); signal?.removeEventListener("abort", onAbort);
      resolve(wasCancelled);
    };
    const onCancel = () => done(true);
    const onAbort = () => done(true);
    set.add(onCancel);
    signal?.addEventListener("abort", onAbort, { once: true });
    if (ms !== Infinity) timer = setTimeout(() => done(false), ms);
  });

  if (answer === "never" || policy.delayMs > 0) {
    const wasCancelled = await waitUnlessCancelled(answer === "never" ? Infinity : policy.delayMs);
    if (wasCancelled) {
      rec.answered = "cancelled"; rec.tAnswer = now();
      return cancelled;
    }
  }
  rec.tAnswer = now();
  if (answer === "cancelled") { rec.answered = "cancelled"; return cancelled; }
  if (answer === "error") {
    rec.answered = "error";
    throw new acp.RequestError(-32603, "driver: permission answered with an error");
  }
  const opt = params.options?.find((o) => o.kind === answer);
  if (!opt) {
    rec.answered = "cancelled"; rec.note = `no option of kind ${answer}`;
    return cancelled;
  }
  rec.answered = answer; rec.optionId = opt.optionId;
  return { outcome: { outcome: "selected", optionId: opt.optionId } };
}

const cancelledAt = new Map(); // sessionId -> seq of our last session/cancel
const answerPendingOnCancel = new Map();
function answerPendingPermissions(sessionId) {
  const set = pendingPermissions.get(sessionId);
  if (!set) return 0;
  const fns = [...set];
  for (const f of fns) f();
  return fns.length;
}

// ---------------------------------------------------------------- the client app
const app = acp
  .client({ name: "kode-acp-driver" })
  .onRequest(acp.methods.client.session.requestPermission, handlePermission)
  // Updates are recorded from the raw stream; registering the handler makes the SDK
  // validate each one (a rejected update shows in sdkLog).
  .onNotification(acp.methods.client.session.update, () => {});
const conn = app.connect(sdkStream);
const agentCx = conn.agent;

// ---------------------------------------------------------------- step helpers
function subst(v) {
  if (typeof v === "string" && v.startsWith("$")) {
    const name = v.slice(1);
    if (name === "last") return vars.last;
    if (Object.prototype.hasOwnProperty.call(vars, name)) return vars[name];
    return v;
  }
  if (Array.isArray(v)) return v.map(subst);
  if (v && typeof v === "object") return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, subst(x)]));
  return v;
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const errInfo = (e) => ({
  code: typeof e?.code === "number" ? e.code : null,
  message: e?.message ?? String(e),
  ...(e?.data !== undefined ? { data: e.data } : {}),
});
let lastPromptSeq = 0;

/** Send one request through the SDK; the step's result/error is the agent's raw response. */
async function sdkRequest(step, method, params, timeoutMs) {
  step.method = method;
  step.params = params;
  awaitingId.push({ method, step });
  const sdkDone = agentCx.request(method, params).then((r) => ({ r }), (e) => ({ e }));
  let timer;
  const timeout = new Promise((resolve) => { timer = setTimeout(() => resolve("timeout"), timeoutMs); });
  const sdk = await Promise.race([sdkDone, timeout]);
  clearTimeout(timer);
  const idx = awaitingId.findIndex((w) => w.step === step);
  if (idx >= 0) awaitingId.splice(idx, 1);
  if (sdk === "timeout") {
    step.ok = false;
    step.error = { code: null, message: `driver: no response within ${timeoutMs} ms`, timeout: true };
    return undefined;
  }
  // Our line splitter sees each stdout chunk before the SDK does, so the raw response is
  // already in the log when the SDK settles. Report it as sent: the SDK rewrites some
  // (e.g. -32002 to session/close becomes {}).
  const raw = step.id === undefined ? undefined : transcript.messages.find(
    (m) => m.dir === "in" && m.msg && !("method" in m.msg) && m.msg.id === step.id);
  if (raw) {
    step.respSeq = raw.seq;
    if ("error" in raw.msg) { step.ok = false; step.error = raw.msg.error; return undefined; }
    step.ok = true; step.result = raw.msg.result;
    return raw.msg.result;
  }
  // no raw response (connection closed, bad params rejected locally, ...)
  if (sdk.e) { step.ok = false; step.error = errInfo(sdk.e); return undefined; }
  step.ok = true; step.result = sdk.r;
  return sdk.r;
}

function withMeta(params, s) {
  if (s._meta !== undefined) params._meta = subst(s._meta);
  return params;
}

function sendCancel(sessionId, answerPending, step) {
  cancelledAt.set(sessionId, seq + 1);
  answerPendingOnCancel.set(sessionId, answerPending !== false);
  const p = agentCx.notify(acp.methods.agent.session.cancel, { sessionId }).catch((e) => {
    if (step) { step.ok = false; step.error = errInfo(e); }
  });
  const n = answerPending === false ? 0 : answerPendingPermissions(sessionId);
  return p.then(() => n);
}

const background = new Map(); // name -> promise of the prompt step
const scheduled = []; // cancelAfterMs timers/promises

async function runStep(s, i) {
  const step = { i, op: s.op, t: now() };
  if (s.label !== undefined) step.label = s.label;
  transcript.steps.push(step);
  const to = s.timeoutMs ?? opts.stepTimeout;
  const sid = () => subst(s.sessionId ?? "$last");
  const cwd = () => subst(s.cwd ?? defaultCwd);
  try {
    switch (s.op) {
      case "initialize": {
        const params = withMeta({
          protocolVersion: s.protocolVersion ?? acp.PROTOCOL_VERSION,
          clientCapabilities: subst(s.clientCapabilities ?? { fs: { readTextFile: false, writeTextFile: false }, terminal: false }),
          clientInfo: subst(s.clientInfo ?? { name: "kode-acp-driver", version: DRIVER_VERSION }),
        }, s);
        const r = await sdkRequest(step, acp.methods.agent.initialize, params, to);
        if (r) vars.init = r;
        break;
      }
      case "newSession": {
        const params = withMeta({ cwd: cwd(), mcpServers: subst(s.mcpServers ?? []) }, s);
        if (s.additionalDirectories) params.additionalDirectories = subst(s.additionalDirectories);
        const r = await sdkRequest(step, acp.methods.agent.session.new, params, to);
        if (r?.sessionId) {
          vars.last = r.sessionId;
          if (s.as) vars[s.as] = r.sessionId;
        }
        break;
      }
      case "loadSession":
        await sdkRequest(step, acp.methods.agent.session.load,
          withMeta({ sessionId: sid(), cwd: cwd(), mcpServers: subst(s.mcpServers ?? []) }, s), to);
        break;
      case "resumeSession": {
        const params = withMeta({ sessionId: sid(), cwd: cwd() }, s);
        if (s.mcpServers) params.mcpServers = subst(s.mcpServers);
        await sdkRequest(step, acp.methods.agent.session.resume, params, to);
        break;
      }
      case "closeSession":
        await sdkRequest(step, acp.methods.agent.session.close, withMeta({ sessionId: sid() }, s), to);
        break;
      case "listSessions": {
        const params = withMeta({}, s);
        if (s.cwd !== undefined) params.cwd = subst(s.cwd);
        if (s.cursor !== undefined) params.cursor = subst(s.cursor);
        await sdkRequest(step, acp.methods.agent.session.list, params, to);
        break;
      }
      case "setMode":
        await sdkRequest(step, acp.methods.agent.session.setMode,
          withMeta({ sessionId: sid(), modeId: subst(s.modeId) }, s), to);
        break;
      case "setConfigOption": {
        const params = withMeta({ sessionId: sid(), configId: subst(s.configId), value: subst(s.value) }, s);
        if (s.type !== undefined) params.type = s.type;
        await sdkRequest(step, acp.methods.agent.session.setConfigOption, params, to);
        break;
      }
      case "prompt": {
        const prompt = s.prompt !== undefined ? subst(s.prompt) : [{ type: "text", text: String(subst(s.text ?? "")) }];
        const params = withMeta({ sessionId: sid(), prompt }, s);
        lastPromptSeq = seq;
        step.sessionId = params.sessionId;
        const run = sdkRequest(step, acp.methods.agent.session.prompt, params, to).then(() => { step.tEnd = now(); });
        if (s.wait === false) {
          background.set(s.as ?? `prompt${i}`, run);
          step.background = s.as ?? `prompt${i}`;
          return; // tEnd is set when it finishes
        }
        await run;
        break;
      }
      case "wait": {
        if (s.all) await Promise.all([...background.values()]);
        else {
          const p = background.get(s.name);
          if (!p) throw new Error(`no background prompt named ${s.name}`);
          await p;
        }
        step.ok = true;
        break;
      }
      case "cancel": {
        const n = await sendCancel(sid(), s.answerPending, step);
        step.ok ??= true;
        step.answeredPermissions = n;
        break;
      }
      case "cancelAfterMs": {
        const sessionId = sid();
        const ms = Number(s.ms ?? 0);
        scheduled.push(sleep(ms).then(async () => {
          const n = await sendCancel(sessionId, s.answerPending);
          step.firedAt = now();
          step.answeredPermissions = n;
        }));
        step.ok = true;
        break;
      }
      case "permissionPolicy": {
        if (s.answer !== undefined) policy.answer = s.answer;
        if (s.delayMs !== undefined) policy.delayMs = Number(s.delayMs);
        if (s.queue !== undefined) policy.queue = [...s.queue];
        step.ok = true;
        break;
      }
      case "waitFor": {
        const since = s.since ?? "lastPrompt";
        const from = since === "start" ? 0 : since === "step" ? seq : lastPromptSeq;
        const want = s.count ?? 1;
        const sessionId = s.sessionId !== undefined ? subst(s.sessionId) : undefined;
        const matches = (m) => m.dir === "in" && m.seq > from && m.msg &&
          (s.method === undefined || m.msg.method === s.method) &&
          (s.sessionUpdate === undefined || (m.msg.method === "session/update" && m.msg.params?.update?.sessionUpdate === s.sessionUpdate)) &&
          (sessionId === undefined || m.msg.params?.sessionId === sessionId);
        let have = transcript.messages.filter(matches).length;
        if (have < want) {
          await new Promise((resolve) => {
            const timer = setTimeout(() => { messageListeners.delete(l); resolve(); }, to);
            const l = (m) => {
              if (matches(m) && ++have >= want) { clearTimeout(timer); messageListeners.delete(l); resolve(); }
            };
            messageListeners.add(l);
          });
        }
        step.matched = have;
        step.ok = have >= want;
        if (!step.ok) step.error = { code: null, message: `driver: ${have}/${want} matching messages within ${to} ms`, timeout: true };
        break;
      }
      case "sleep":
        await sleep(Number(s.ms ?? 0));
        step.ok = true;
        break;
      case "request": {
        const params = s.params === undefined ? undefined : subst(s.params);
        await sdkRequest(step, String(s.method), params, to);
        break;
      }
      case "notify":
        step.method = s.method;
        await agentCx.notify(String(s.method), s.params === undefined ? undefined : subst(s.params));
        step.ok = true;
        break;
      case "raw": {
        const line = String(s.line);
        transcript.messages.push({ seq: ++seq, t: now(), dir: "out", raw: line });
        await new Promise((resolve) => child.stdin.write(line + "\n", () => resolve()));
        step.ok = true;
        break;
      }
      case "closeStdin":
        closeStdin();
        step.ok = true;
        break;
      case "waitExit": {
        const ms = s.timeoutMs ?? 5000;
        await Promise.race([exitPromise, sleep(ms)]);
        step.ok = exited;
        if (!exited) step.error = { code: null, message: `driver: agent still running after ${ms} ms`, timeout: true };
        step.exit = transcript.exit;
        break;
      }
      case "kill":
        child.kill(s.signal ?? "SIGKILL");
        step.ok = true;
        break;
      default:
        throw new Error(`unknown op ${s.op}`);
    }
  } catch (e) {
    step.ok = false;
    step.error = errInfo(e);
  }
  step.tEnd ??= now();
}

function closeStdin() {
  if (eofAt !== null) return;
  eofAt = now();
  transcript.messages.push({ seq: ++seq, t: eofAt, dir: "out", eof: true });
  child.stdin.end();
}

// ---------------------------------------------------------------- run
function finish(code) {
  transcript.durationMs = now();
  // updates of each prompt / load step: between its request and its response, and after
  for (const step of transcript.steps) {
    if (!["prompt", "loadSession"].includes(step.op) || step.reqSeq === undefined) continue;
    const sessionId = step.params?.sessionId;
    const upd = (m) => m.dir === "in" && m.msg?.method === "session/update" && m.msg.params?.sessionId === sessionId;
    const end = step.respSeq ?? Infinity;
    step.updates = transcript.messages.filter((m) => upd(m) && m.seq > step.reqSeq && m.seq < end).map((m) => m.msg.params.update);
    if (step.respSeq !== undefined) {
      // after the response, until the next request we sent about that session
      const next = transcript.messages.find((m) => m.dir === "out" && m.seq > step.respSeq && m.msg && "id" in m.msg && m.msg.method && m.msg.params?.sessionId === sessionId);
      const stop = next ? next.seq : Infinity;
      step.lateUpdates = transcript.messages.filter((m) => upd(m) && m.seq > step.respSeq && m.seq < stop).map((m) => m.msg.params.update);
    }
  }
  const text = JSON.stringify(transcript, null, opts.pretty ? 2 : undefined) + "\n";
  if (opts.out) writeFileSync(opts.out, text);
  else process.stdout.write(text);
  process.exitCode = code;
  // let stdout drain, then leave even if handles (the SDK's reader) are still open
  setTimeout(() => process.exit(code), 50).unref();
}

const overall = setTimeout(async () => {
  transcript.timedOut = true;
  transcript.driverErrors.push({ t: now(), error: `overall timeout ${opts.timeout} ms` });
  if (!exited) { child.kill("SIGKILL"); transcript.killed = true; }
  await Promise.race([exitPromise, sleep(1000)]);
  finish(2);
}, opts.timeout);

try {
  for (let i = 0; i < steps.length; i++) {
    await runStep(steps[i], i);
    if (transcript.timedOut) break;
  }
  if (!transcript.timedOut) {
    await Promise.race([Promise.all(scheduled), sleep(opts.exitTimeout)]);
    // background prompts still running stay unanswered in the transcript
    closeStdin();
    await Promise.race([exitPromise, sleep(opts.exitTimeout)]);
    if (!exited) {
      child.kill("SIGKILL");
      await Promise.race([exitPromise, sleep(1000)]);
      if (transcript.exit) transcript.exit.killed = true;
      else transcript.exit = { code: null, signal: "SIGKILL", t: now(), killed: true };
    }
    conn.close();
    clearTimeout(overall);
    finish(0);
  }
} catch (e) {
  transcript.driverErrors.push({ t: now(), error: `driver: ${e?.stack ?? e}` });
  if (!exited) child.kill("SIGKILL");
  clearTimeout(overall);
  finish(2);
}
