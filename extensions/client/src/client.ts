import { spawn, type ChildProcess } from "node:child_process";
import { createInterface } from "node:readline";
import {
  CancellationToken,
  CancellationTokenSource,
  createMessageConnection,
  ResponseError,
  StreamMessageReader,
  StreamMessageWriter,
  type MessageConnection,
} from "vscode-jsonrpc/node";
import { resolveServerCommand, type ServerCommand } from "./discovery.js";
import { ErrorCodes, KodeConnectionError, KodeRpcError } from "./errors.js";
import type {
  AgentConfig,
  AgentInfo,
  AgentRef,
  AgentStatus,
  ApprovalRequest,
  ApprovalResponse,
  ClientRequestName,
  CompleteResult,
  ConsistencyParams,
  ConsistencyResult,
  DecideParams,
  DecideResult,
  DeleteResult,
  EventEnvelope,
  EventsParams,
  EventsResult,
  ForkParams,
  InitializeResult,
  InterruptParams,
  InterruptResult,
  ListParams,
  ListResult,
  MessagesParams,
  MessagesResult,
  ParamsOf,
  PoolStats,
  PrometheusResult,
  ResultOf,
  ResumeParams,
  ResumeResult,
  SendParams,
  SendResult,
  StoreHealth,
  StoreMetrics,
  TemplatesResult,
  TodosParams,
  TodosResult,
  TurnError,
} from "./protocol.js";
import { PROTOCOL_VERSION } from "./protocol.js";

// ---------------------------------------------------------------------------------------
// Public types

export interface Logger {
  info(message: string): void;
  warn(message: string): void;
  error(message: string): void;
  /** Optional; server DEBUG lines and connection traces go here when present. */
  debug?(message: string): void;
}

export interface Disposable {
  dispose(): void;
}

/**
 * The result of `agent/complete` (`CompleteResult`), narrowed on `status`: a turn that
 * failed (`done {reason: "error"}`, e.g. a provider's 401, quota or 5xx after retries)
 * is a result with `status: "error"` and `error: {type, message, retryable}` (`type` from
 * the -32020 vocabulary: `authentication`, `rate_limit`, `quota_exceeded`, `timeout`,
 * `connection`, `service_unavailable`, `invalid_request`, `invalid_response`,
 * `internal`, ...), not a rejected promise. `error` is set exactly when `status` is
 * "error".
 */
export type CompleteOutcome =
  | (CompleteResult & { status: "error"; error: TurnError })
  | (CompleteResult & { status: "ok" | "paused" | "interrupted"; error?: null });

export type Channel = EventEnvelope["channel"];
export type AgentEvent = EventEnvelope["event"];
export type EventListener = (envelope: EventEnvelope) => void;

/** What an approval handler returns. Anything else (or a throw) means deny. */
export interface ApprovalDecision {
  decision: "allow" | "deny";
  /** With `allow`: allow this tool for the agent from now on. */
  remember?: boolean;
  /** Passed to the model with the decision. */
  note?: string;
}

export interface ApprovalContext {
  /** Aborted when the server withdraws the request (timeout, decided elsewhere, interrupt). */
  signal: AbortSignal;
  token: CancellationToken;
}

export type ApprovalHandler = (
  request: ApprovalRequest,
  context: ApprovalContext,
) => ApprovalDecision | Promise<ApprovalDecision>;

export type ClientState = "starting" | "running" | "restarting" | "stopping" | "stopped" | "failed";

export interface RestartInfo {
  /** Consecutive restart attempt that succeeded (1 = first try). */
  attempt: number;
  /** How the previous server process ended. */
  exitCode: number | null;
  signal: NodeJS.Signals | null;
  previousPid: number | undefined;
  pid: number | undefined;
  /** Agents re-subscribed with `agent/resume`, with the `since` cursor used. */
  resumed: { agentId: string; since: number | undefined; replayed: number }[];
  /** Agents whose resume failed (e.g. deleted meanwhile: `-32002`). */
  failed: { agentId: string; error: Error }[];
}

export interface RequestOptions {
  /** vscode-jsonrpc cancellation: cancelling sends `$/cancelRequest`; the request then rejects with `-32800`. */
  token?: CancellationToken;
  /** Same as `token`, as an AbortSignal. */
  signal?: AbortSignal;
  /** Cancel (with `$/cancelRequest`) when no answer came within this many ms. */
  timeoutMs?: number;
}

export interface KodeClientOptions {
  // --- how to start the server (see resolveServerCommand for the order) ---
  /** Explicit command, used verbatim with `args` (no discovery, nothing appended). */
  command?: string;
  args?: string[];
  /** Path of a `kode-rpc` executable (e.g. a user setting). Must exist. */
  serverPath?: string;
  /** Path of a bundled (frozen) `kode-rpc` binary; skipped when the file is missing. */
  bundledPath?: string;
  /** Extra arguments after `serve` for discovered commands (e.g. `["--log-level", "debug"]`). */
  serverArgs?: string[];
  /** Environment of the server (default `process.env`); the dir options below are added to it. */
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** Sets `KODE_DATA_DIR` / `KODE_LOG_DIR` / `KODE_CONFIG_DIR` for the server. */
  dataDir?: string;
  logDir?: string;
  configDir?: string;

  // --- initialize ---
  clientInfo?: { name: string; version?: string };
  workspaceFolders?: string[];
  /** Handler for `approval/request`; see also `setApprovalHandler`. */
  approvalHandler?: ApprovalHandler;
  /**
   * `capabilities.approvals` sent in `initialize` (fixed for the client's life). Default:
   * true when `approvalHandler` is given. When false, the server sends no
   * `approval/request`; the client then runs its approval handler (if one is set) on
   * live `permission_required` events and answers with `agent/decide`.
   */
  approvals?: boolean;

  // --- behaviour ---
  logger?: Logger;
  /** Timeout of spawn + `initialize` (default 30000 ms). */
  startTimeoutMs?: number;
  /** Restart the server when it exits unexpectedly (default true). */
  autoRestart?: boolean;
  /**
   * Kill the server on the host's SIGINT/SIGTERM/SIGHUP (re-raising the signal when
   * nobody else handles it). Default true; hosts with their own signal handling
   * (Electron) pass false and dispose() themselves. The server is killed on the
   * host's `exit` either way.
   */
  handleSignals?: boolean;
  /** Consecutive restart attempts before giving up (state `failed`); default 5. */
  maxRestarts?: number;
  /** First restart delay (default 200 ms), doubled per consecutive attempt up to `maxRestartDelayMs` (default 5000 ms). */
  restartDelayMs?: number;
  maxRestartDelayMs?: number;
  /** A server that ran this long resets the consecutive-attempt count (default 60000 ms). */
  restartResetMs?: number;
  /** `agent/resume` strategy used after a restart (default "crash"). */
  resumeStrategy?: "crash" | "manual";
  /** How long `dispose()` waits for shutdown + exit before killing (default 3000 ms). */
  shutdownTimeoutMs?: number;
}

// ---------------------------------------------------------------------------------------
// Host-exit cleanup: no server survives the Node process.

const liveProcesses = new Set<ChildProcess>();
let hooksInstalled = false;

function killAllServers(signal: NodeJS.Signals): void {
  for (const p of liveProcesses) {
    try {
      // SIGTERM: the server shuts down gracefully and kills its tool process trees.
      p.kill(signal);
    } catch {
      /* already gone */
    }
  }
}

function onHostExit(): void {
  killAllServers("SIGTERM");
}

function onHostSignal(sig: NodeJS.Signals): void {
  killAllServers("SIGTERM");
  // If nobody else handles the signal, restore the default behaviour (terminate).
  if (process.listenerCount(sig) <= 1) {
    uninstallHooks();
    process.kill(process.pid, sig);
  }
}
const onSigint = () => onHostSignal("SIGINT");
const onSigterm = () => onHostSignal("SIGTERM");
const onSighup = () => onHostSignal("SIGHUP");

let signalHooks = false;

function installHooks(signals: boolean): void {
  if (!hooksInstalled) {
    hooksInstalled = true;
    process.on("exit", onHostExit);
  }
  if (signals && !signalHooks) {
    signalHooks = true;
    process.on("SIGINT", onSigint);
    process.on("SIGTERM", onSigterm);
    if (process.platform !== "win32") process.on("SIGHUP", onSighup);
  }
}

function uninstallHooks(): void {
  if (!hooksInstalled) return;
  hooksInstalled = false;
  signalHooks = false;
  process.off("exit", onHostExit);
  process.off("SIGINT", onSigint);
  process.off("SIGTERM", onSigterm);
  process.off("SIGHUP", onSighup);
}

function track(p: ChildProcess, signals: boolean): void {
  liveProcesses.add(p);
  installHooks(signals);
}

function untrack(p: ChildProcess): void {
  liveProcesses.delete(p);
  if (liveProcesses.size === 0) uninstallHooks();
}

// ---------------------------------------------------------------------------------------
// Helpers

const silentLogger: Logger = {
  info() {},
  warn: (m) => console.warn(m),
  error: (m) => console.error(m),
};

interface Deferred<T> {
  promise: Promise<T>;
  resolve(v: T): void;
  reject(e: unknown): void;
  settled: boolean;
}

function deferred<T>(): Deferred<T> {
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  const d = {} as Deferred<T>;
  d.settled = false;
  d.promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  d.promise.catch(() => {}); // nobody waiting is fine
  d.resolve = (v) => {
    if (!d.settled) {
      d.settled = true;
      resolve(v);
    }
  };
  d.reject = (e) => {
    if (!d.settled) {
      d.settled = true;
      reject(e);
    }
  };
  return d;
}

/** `unref`: the timer alone does not keep Node alive (for timeouts raced against real work). */
function sleep(ms: number, abort?: AbortSignal, unref = false): Promise<void> {
  return new Promise((res) => {
    const t = setTimeout(done, ms);
    if (unref) t.unref();
    function done() {
      clearTimeout(t);
      abort?.removeEventListener("abort", done);
      res();
    }
    abort?.addEventListener("abort", done, { once: true });
  });
}

const LEVEL_RE = /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[,.]\d+ (DEBUG|INFO|WARNING|ERROR|CRITICAL) /;

/** One server process and its connection. */
interface Generation {
  proc: ChildProcess;
  conn: MessageConnection;
  pid: number | undefined;
  startedAt: number;
  pending: Map<number, { method: string; reject(e: Error): void }>;
  exited: Deferred<{ code: number | null; signal: NodeJS.Signals | null }>;
  stderrTail: string[];
  handled: boolean;
}

const AGENT_ID_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

// ---------------------------------------------------------------------------------------

/**
 * A client of one `kode-rpc` server process that it spawns and owns.
 *
 * ```ts
 * const client = await KodeClient.start({ clientInfo: { name: "my-app" } });
 * const agent = await client.createAgent({ model: { provider: "echo" } });
 * client.onAgentEvent(agent.agentId, (e) => console.log(e.seq, e.event.type));
 * await client.complete({ agentId: agent.agentId, text: "hello" });
 * await client.dispose();
 * ```
 */
export class KodeClient {
  private readonly opts: KodeClientOptions;
  private readonly logger: Logger;
  private gen: Generation | undefined;
  private command: ServerCommand | undefined;
  private _state: ClientState = "starting";
  private ready: Deferred<void> = deferred();
  private initResult: InitializeResult | undefined;
  private approvalHandler: ApprovalHandler | undefined;
  private readonly approvalsCapability: boolean;
  private readonly approvalAnswers = new Map<string, Promise<ApprovalResponse>>();
  private readonly watched = new Set<string>();
  /** Highest seq delivered per agent (the replay cursor). */
  private readonly cursors = new Map<string, number>();
  /** Agent's lastSeq when subscribed without replay, until an event sets the cursor. */
  private readonly baselines = new Map<string, number>();
  private readonly listeners = new Set<EventListener>();
  private readonly agentListeners = new Map<string, Set<{ fn: EventListener; channels?: Set<Channel> }>>();
  private readonly restartListeners = new Set<(info: RestartInfo) => void>();
  private readonly stateListeners = new Set<(state: ClientState, previous: ClientState) => void>();
  private consecutiveRestarts = 0;
  private readonly stopAbort = new AbortController();
  private disposePromise: Promise<void> | undefined;
  private expectExit = false;
  private _duplicatesDropped = 0;

  private constructor(options: KodeClientOptions) {
    this.opts = options;
    this.logger = options.logger ?? silentLogger;
    this.approvalHandler = options.approvalHandler;
    this.approvalsCapability = options.approvals ?? options.approvalHandler !== undefined;
  }

  /** Spawns the server, sends `initialize`, and resolves once it answered. */
  static async start(options: KodeClientOptions = {}): Promise<KodeClient> {
    const client = new KodeClient(options);
    try {
      client.command = await resolveServerCommand({
        command: options.command,
        args: options.args,
        serverPath: options.serverPath,
        bundledPath: options.bundledPath,
        serverArgs: options.serverArgs,
        env: options.env,
        warn: (m) => client.logger.warn(m),
      });
      client.logger.info(
        `kode-rpc: starting ${client.command.command} ${client.command.args.join(" ")} (${client.command.source})`,
      );
      await client.launch();
    } catch (e) {
      client.setState("failed");
      client.ready.reject(e);
      const g = client.gen;
      if (g && g.exited.settled === false) {
        try {
          g.proc.kill("SIGKILL");
        } catch {
          /* gone */
        }
      }
      throw e;
    }
    client.setState("running");
    client.ready.resolve();
    return client;
  }

  // --- state -------------------------------------------------------------------------

  get state(): ClientState {
    return this._state;
  }

  /** Pid of the current server process (changes after a restart). */
  get serverPid(): number | undefined {
    return this.gen?.pid;
  }

  /** The command the server was started with and the discovery step that chose it. */
  get serverCommand(): ServerCommand | undefined {
    return this.command;
  }

  /** The result of the last `initialize` (server version, capabilities, dataDir). */
  get initializeResult(): InitializeResult | undefined {
    return this.initResult;
  }

  /** Agents re-subscribed after a restart. */
  get watchedAgents(): string[] {
    return [...this.watched];
  }

  /** Highest `seq` delivered to listeners for this agent. */
  lastSeq(agentId: string): number | undefined {
    return this.cursors.get(agentId);
  }

  /** Events dropped as duplicates (seq <= cursor), e.g. replays after a restart. */
  get duplicatesDropped(): number {
    return this._duplicatesDropped;
  }

  /** Resolves when the client is running (immediately, or after a restart). */
  whenReady(): Promise<void> {
    return this.ready.promise;
  }

  onStateChange(listener: (state: ClientState, previous: ClientState) => void): Disposable {
    this.stateListeners.add(listener);
    return { dispose: () => this.stateListeners.delete(listener) };
  }

  onRestart(listener: (info: RestartInfo) => void): Disposable {
    this.restartListeners.add(listener);
    return { dispose: () => this.restartListeners.delete(listener) };
  }

  private setState(s: ClientState): void {
    const prev = this._state;
    if (prev === s) return;
    this._state = s;
    for (const l of [...this.stateListeners]) {
      try {
        l(s, prev);
      } catch (e) {
        this.logger.error(`kode-rpc: onStateChange listener threw: ${String(e)}`);
      }
    }
  }

  // --- events ------------------------------------------------------------------------

  /** Every `agent/event` (all agents), deduplicated and in seq order per agent. */
  onEvent(listener: EventListener): Disposable {
    this.listeners.add(listener);
    return { dispose: () => this.listeners.delete(listener) };
  }

  /**
   * Events of one agent, optionally only some channels. This registers a local
   * listener; the server sends events of agents this client created, resumed, sent to,
   * decided on or set todos of (call `subscribe()` for any other agent).
   */
  onAgentEvent(agentId: string, listener: EventListener, options: { channels?: Channel[] } = {}): Disposable {
    let set = this.agentListeners.get(agentId);
    if (!set) {
      set = new Set();
      this.agentListeners.set(agentId, set);
    }
    const entry = { fn: listener, channels: options.channels ? new Set(options.channels) : undefined };
    set.add(entry);
    return {
      dispose: () => {
        const s = this.agentListeners.get(agentId);
        s?.delete(entry);
        if (s && s.size === 0) this.agentListeners.delete(agentId);
      },
    };
  }

  /**
   * Resolves with the first event of `agentId` delivered from now on that matches
   * `predicate` (e.g. `(e) => e.event.type === "done"`).
   */
  waitForEvent(
    agentId: string,
    predicate: (envelope: EventEnvelope) => boolean,
    options: { timeoutMs?: number; signal?: AbortSignal } = {},
  ): Promise<EventEnvelope> {
    return new Promise((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const cleanup = () => {
        sub.dispose();
        if (timer) clearTimeout(timer);
        options.signal?.removeEventListener("abort", onAbort);
      };
      const onAbort = () => {
        cleanup();
        reject(new Error("waitForEvent aborted"));
      };
      const sub = this.onAgentEvent(agentId, (e) => {
        let ok = false;
        try {
          ok = predicate(e);
        } catch (err) {
          cleanup();
          reject(err);
          return;
        }
        if (ok) {
          cleanup();
          resolve(e);
        }
      });
      if (options.timeoutMs !== undefined) {
        timer = setTimeout(() => {
          cleanup();
          reject(new Error(`waitForEvent(${agentId}) timed out after ${options.timeoutMs} ms`));
        }, options.timeoutMs);
      }
      if (options.signal) {
        if (options.signal.aborted) onAbort();
        else options.signal.addEventListener("abort", onAbort, { once: true });
      }
    });
  }

  private deliver(env: EventEnvelope): void {
    const last = this.cursors.get(env.agentId);
    if (last !== undefined && env.seq <= last) {
      this._duplicatesDropped++;
      return;
    }
    if (last !== undefined && env.seq !== last + 1 && this.watched.has(env.agentId)) {
      this.logger.warn(`kode-rpc: agent ${env.agentId}: seq jumped from ${last} to ${env.seq}`);
    }
    this.cursors.set(env.agentId, env.seq);
    this.baselines.delete(env.agentId);
    for (const l of [...this.listeners]) {
      try {
        l(env);
      } catch (e) {
        this.logger.error(`kode-rpc: event listener threw: ${String(e)}`);
      }
    }
    const set = this.agentListeners.get(env.agentId);
    if (set) {
      for (const entry of [...set]) {
        if (entry.channels && !entry.channels.has(env.channel)) continue;
        try {
          entry.fn(env);
        } catch (e) {
          this.logger.error(`kode-rpc: event listener threw: ${String(e)}`);
        }
      }
    }
    if (
      !this.approvalsCapability &&
      env.event.type === "permission_required" &&
      !env.replay &&
      this.approvalHandler
    ) {
      void this.answerPermissionEvent(env);
    }
  }

  // --- approvals -----------------------------------------------------------------------

  /**
   * Sets (or clears) the approval handler. A handler that throws, returns something
   * that is not `{decision: "allow"|"deny"}`, or a missing handler means deny.
   */
  setApprovalHandler(handler: ApprovalHandler | undefined): void {
    this.approvalHandler = handler;
  }

  private answerApproval(req: ApprovalRequest, token: CancellationToken): Promise<ApprovalResponse> {
    // The same approval re-issued after a restart (or twice) gets the same answer,
    // and a prompt still open is not shown twice.
    const key = `${req.agentId}\u0000${req.approvalId}`;
    const known = this.approvalAnswers.get(key);
    if (known) return known;
    const p = this.runApprovalHandler(req, token);
    this.approvalAnswers.set(key, p);
    while (this.approvalAnswers.size > 512) {
      const first = this.approvalAnswers.keys().next().value as string;
      this.approvalAnswers.delete(first);
    }
    return p;
  }

  private async runApprovalHandler(req: ApprovalRequest, token: CancellationToken): Promise<ApprovalResponse> {
    const handler = this.approvalHandler;
    if (!handler) {
      this.logger.warn(`kode-rpc: approval ${req.approvalId} (${req.call?.name}) denied: no approval handler`);
      return { decision: "deny" };
    }
    const ac = new AbortController();
    const sub = token.onCancellationRequested(() => ac.abort());
    if (token.isCancellationRequested) ac.abort();
    try {
      const r = await handler(req, { signal: ac.signal, token });
      if (!r || (r.decision !== "allow" && r.decision !== "deny")) {
        this.logger.warn(`kode-rpc: approval handler returned ${JSON.stringify(r)}; denying`);
        return { decision: "deny" };
      }
      const out: ApprovalResponse = { decision: r.decision };
      if (r.remember) out.remember = true;
      if (typeof r.note === "string") out.note = r.note;
      return out;
    } catch (e) {
      this.logger.warn(`kode-rpc: approval handler threw (${String(e)}); denying`);
      return { decision: "deny" };
    } finally {
      sub.dispose();
    }
  }

  private async answerPermissionEvent(env: EventEnvelope): Promise<void> {
    const ev = env.event as { type: "permission_required"; approvalId: string; call: ApprovalRequest["call"] };
    const req: ApprovalRequest = {
      agentId: env.agentId,
      approvalId: ev.approvalId,
      turnId: env.turnId ?? "",
      call: ev.call,
      title: `${ev.call?.name ?? "tool"}`,
      subject: { type: "tool_call" },
      options: ["allow", "deny"],
    };
    const r = await this.answerApproval(req, CancellationToken.None);
    try {
      await this.decide({ agentId: env.agentId, approvalId: ev.approvalId, decision: r.decision, note: r.note });
    } catch (e) {
      if (e instanceof KodeRpcError && (e.code === ErrorCodes.ApprovalNotPending || e.code === ErrorCodes.NotFound)) return;
      this.logger.warn(`kode-rpc: agent/decide for ${ev.approvalId} failed: ${String(e)}`);
    }
  }

  // --- process management ------------------------------------------------------------

  private serverEnv(): NodeJS.ProcessEnv {
    const env: NodeJS.ProcessEnv = { ...(this.opts.env ?? process.env) };
    if (this.opts.dataDir) env.KODE_DATA_DIR = this.opts.dataDir;
    if (this.opts.logDir) env.KODE_LOG_DIR = this.opts.logDir;
    if (this.opts.configDir) env.KODE_CONFIG_DIR = this.opts.configDir;
    return env;
  }

  /** Spawns a server process, connects and initializes it; it becomes `this.gen`. */
  private async launch(): Promise<Generation> {
    const cmd = this.command!;
    const proc = spawn(cmd.command, cmd.args, {
      stdio: ["pipe", "pipe", "pipe"],
      windowsHide: true,
      env: this.serverEnv(),
      cwd: this.opts.cwd,
    });
    await new Promise<void>((res, rej) => {
      const onErr = (e: Error) => {
        proc.off("spawn", onSpawn);
        rej(new KodeConnectionError(`kode-rpc: cannot start ${cmd.command}: ${e.message}`));
      };
      const onSpawn = () => {
        proc.off("error", onErr);
        res();
      };
      proc.once("error", onErr);
      proc.once("spawn", onSpawn);
    });
    track(proc, this.opts.handleSignals ?? true);
    proc.on("error", (e) => this.logger.warn(`kode-rpc: server process error: ${e.message}`));
    proc.stdin!.on("error", () => {}); // EPIPE after a crash: handled by the exit path
    proc.stdout!.on("error", () => {});
    proc.stderr!.on("error", () => {});

    const conn = createMessageConnection(
      new StreamMessageReader(proc.stdout!),
      new StreamMessageWriter(proc.stdin!),
      {
        error: (m) => this.logger.debug?.(`kode-rpc connection: ${m}`),
        warn: (m) => this.logger.debug?.(`kode-rpc connection: ${m}`),
        info: (m) => this.logger.debug?.(`kode-rpc connection: ${m}`),
        log: (m) => this.logger.debug?.(`kode-rpc connection: ${m}`),
      },
    );
    const gen: Generation = {
      proc,
      conn,
      pid: proc.pid,
      startedAt: Date.now(),
      pending: new Map(),
      exited: deferred(),
      stderrTail: [],
      handled: false,
    };
    this.gen = gen;

    // stderr -> logger, by the level in the server's log line format.
    let level: "debug" | "info" | "warn" | "error" = "info";
    createInterface({ input: proc.stderr! }).on("line", (line) => {
      const m = LEVEL_RE.exec(line);
      if (m) {
        level =
          m[1] === "DEBUG" ? "debug" : m[1] === "INFO" ? "info" : m[1] === "WARNING" ? "warn" : "error";
      }
      gen.stderrTail.push(line);
      if (gen.stderrTail.length > 20) gen.stderrTail.shift();
      const text = `[kode-rpc ${gen.pid}] ${line}`;
      if (level === "debug") this.logger.debug?.(text);
      else this.logger[level](text);
    });

    conn.onNotification("agent/event", (params: EventEnvelope) => {
      if (this.gen !== gen) return; // a dead server's leftovers
      this.deliver(params);
    });
    conn.onRequest("approval/request", (params: ApprovalRequest, token: CancellationToken) =>
      this.answerApproval(params, token),
    );
    conn.onUnhandledNotification((n) => this.logger.debug?.(`kode-rpc: unhandled notification ${n.method}`));
    conn.onError(([err]) => this.logger.debug?.(`kode-rpc: connection error: ${err?.message ?? String(err)}`));
    conn.listen();

    let stdoutClosed = false;
    const stdoutDone = new Promise<void>((res) => {
      proc.stdout!.once("close", () => {
        stdoutClosed = true;
        res();
      });
    });
    proc.once("exit", (code, signal) => {
      untrack(proc);
      // Read what the server wrote before it died (responses, events) before failing requests.
      const wait = stdoutClosed ? Promise.resolve() : Promise.race([stdoutDone, sleep(1000, undefined, true)]);
      void wait.then(() => {
        gen.exited.resolve({ code, signal });
        this.onExit(gen, code, signal);
      });
    });

    const timeoutMs = this.opts.startTimeoutMs ?? 30_000;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, rej) => {
      timer = setTimeout(
        () => rej(new KodeConnectionError(`kode-rpc: server did not answer initialize within ${timeoutMs} ms`, "initialize")),
        timeoutMs,
      );
    });
    try {
      const result = await Promise.race([
        this.rawRequest(gen, "initialize", {
          protocolVersion: PROTOCOL_VERSION,
          clientInfo: this.opts.clientInfo ?? { name: "@kode-rpc/client" },
          processId: process.pid,
          workspaceFolders: this.opts.workspaceFolders,
          capabilities: { approvals: this.approvalsCapability },
        }),
        timeout,
      ]);
      this.initResult = result;
      void conn.sendNotification("initialized", {}).catch(() => {});
    } catch (e) {
      try {
        proc.kill("SIGKILL");
      } catch {
        /* gone */
      }
      if (e instanceof KodeConnectionError && gen.stderrTail.length) {
        throw new KodeConnectionError(
          `${e.message}\n--- server stderr (last lines) ---\n${gen.stderrTail.join("\n")}`,
          e.method,
          e.exitCode,
          e.signal,
        );
      }
      throw e;
    } finally {
      clearTimeout(timer);
    }
    return gen;
  }

  private onExit(gen: Generation, code: number | null, signal: NodeJS.Signals | null): void {
    if (gen.handled) return;
    gen.handled = true;
    const how = signal ? `signal ${signal}` : `code ${code}`;
    for (const [, p] of gen.pending) {
      p.reject(
        new KodeConnectionError(
          `kode-rpc server (pid ${gen.pid}) exited (${how}) before answering ${p.method}`,
          p.method,
          code,
          signal,
        ),
      );
    }
    gen.pending.clear();
    gen.conn.dispose();
    if (gen !== this.gen) return;
    const s = this._state;
    if (s === "stopping" || s === "stopped" || s === "failed" || s === "starting" || s === "restarting") {
      // start()/dispose()/the restart loop handle this exit.
      return;
    }
    if (this.expectExit) {
      this.logger.info(`kode-rpc: server exited after shutdown (${how})`);
      this.setState("stopped");
      this.ready = deferred();
      this.ready.reject(new KodeConnectionError("kode-rpc: the server was shut down"));
      return;
    }
    this.logger.warn(`kode-rpc: server (pid ${gen.pid}) exited unexpectedly (${how})`);
    if (this.opts.autoRestart === false) {
      this.setState("failed");
      this.ready = deferred();
      this.ready.reject(new KodeConnectionError(`kode-rpc: the server exited (${how}); autoRestart is off`));
      return;
    }
    void this.restartLoop(gen, code, signal);
  }

  private async restartLoop(dead: Generation, code: number | null, signal: NodeJS.Signals | null): Promise<void> {
    this.ready = deferred();
    this.setState("restarting");
    const resetMs = this.opts.restartResetMs ?? 60_000;
    if (Date.now() - dead.startedAt >= resetMs) this.consecutiveRestarts = 0;
    const max = this.opts.maxRestarts ?? 5;
    const base = this.opts.restartDelayMs ?? 200;
    const cap = this.opts.maxRestartDelayMs ?? 5000;
    let lastError: unknown;
    while (this.consecutiveRestarts < max) {
      this.consecutiveRestarts++;
      const attempt = this.consecutiveRestarts;
      const delay = Math.min(base * 2 ** (attempt - 1), cap);
      await sleep(delay, this.stopAbort.signal);
      if (this.stopAbort.signal.aborted) return;
      try {
        this.logger.info(`kode-rpc: restarting the server (attempt ${attempt}/${max})`);
        const gen = await this.launch();
        if (this.stopAbort.signal.aborted) return; // dispose() takes it from here
        const { resumed, failed } = await this.resumeWatched(gen);
        if (this.stopAbort.signal.aborted) return;
        if (gen.exited.settled || gen !== this.gen) throw new Error("the server exited while resuming");
        this.setState("running");
        this.ready.resolve();
        const info: RestartInfo = {
          attempt,
          exitCode: code,
          signal,
          previousPid: dead.pid,
          pid: gen.pid,
          resumed,
          failed,
        };
        this.logger.info(`kode-rpc: server restarted (pid ${gen.pid}); resumed ${resumed.length} agent(s)`);
        for (const l of [...this.restartListeners]) {
          try {
            l(info);
          } catch (e) {
            this.logger.error(`kode-rpc: onRestart listener threw: ${String(e)}`);
          }
        }
        return;
      } catch (e) {
        lastError = e;
        if (this.stopAbort.signal.aborted) return; // dispose() takes it from here
        this.logger.warn(`kode-rpc: restart attempt ${attempt} failed: ${e instanceof Error ? e.message : String(e)}`);
        const g = this.gen;
        if (g && !g.exited.settled) {
          try {
            g.proc.kill("SIGKILL");
          } catch {
            /* gone */
          }
          await g.exited.promise;
        }
        if (this.stopAbort.signal.aborted) return;
      }
    }
    const msg = `kode-rpc: the server could not be restarted after ${max} attempts: ${
      lastError instanceof Error ? lastError.message : String(lastError)
    }`;
    this.logger.error(msg);
    this.setState("failed");
    this.ready.reject(new KodeConnectionError(msg));
  }

  private async resumeWatched(
    gen: Generation,
  ): Promise<{ resumed: RestartInfo["resumed"]; failed: RestartInfo["failed"] }> {
    const resumed: RestartInfo["resumed"] = [];
    const failed: RestartInfo["failed"] = [];
    const queue = [...this.watched];
    const strategy = this.opts.resumeStrategy ?? "crash";
    const worker = async () => {
      for (let agentId = queue.shift(); agentId !== undefined; agentId = queue.shift()) {
        const since = this.cursors.get(agentId) ?? this.baselines.get(agentId);
        const params: ResumeParams = { agentId, strategy };
        if (since !== undefined) params.since = since;
        try {
          const r = await this.rawRequest(gen, "agent/resume", params);
          resumed.push({ agentId, since, replayed: r.replayed });
          if (!this.cursors.has(agentId)) this.baselines.set(agentId, r.lastSeq);
        } catch (e) {
          if (e instanceof KodeConnectionError) throw e;
          if (e instanceof KodeRpcError && e.code === ErrorCodes.NotFound) this.unwatch(agentId);
          this.logger.warn(`kode-rpc: could not resume agent ${agentId}: ${String(e)}`);
          failed.push({ agentId, error: e as Error });
        }
      }
    };
    await Promise.all([worker(), worker(), worker(), worker()]);
    return { resumed, failed };
  }

  /**
   * `shutdown` + `exit`, waits up to `shutdownTimeoutMs` (3 s) for the process to end,
   * then kills it. Pending requests reject with `KodeConnectionError`. Idempotent.
   */
  dispose(): Promise<void> {
    if (!this.disposePromise) this.disposePromise = this.doDispose();
    return this.disposePromise;
  }

  private async doDispose(): Promise<void> {
    this.setState("stopping");
    this.stopAbort.abort();
    const gen = this.gen;
    const deadline = Date.now() + (this.opts.shutdownTimeoutMs ?? 3000);
    if (gen && !gen.exited.settled) {
      try {
        const shutdown = this.rawRequest(gen, "shutdown", {});
        await Promise.race([shutdown, sleep(Math.max(0, deadline - Date.now()), undefined, true)]);
        await gen.conn.sendNotification("exit", {});
      } catch {
        /* dead or refusing: killed below */
      }
      try {
        gen.proc.stdin?.end();
      } catch {
        /* closed */
      }
      const exited = await Promise.race([
        gen.exited.promise.then(() => true),
        sleep(Math.max(0, deadline - Date.now()), undefined, true).then(() => false),
      ]);
      if (!exited) {
        this.logger.warn(`kode-rpc: server (pid ${gen.pid}) did not exit in time; killing it`);
        try {
          gen.proc.kill("SIGKILL");
        } catch {
          /* gone */
        }
        await Promise.race([gen.exited.promise, sleep(5000, undefined, true)]);
      }
    }
    if (gen) this.onExit(gen, gen.proc.exitCode, gen.proc.signalCode);
    this.ready = deferred();
    this.ready.reject(new KodeConnectionError("kode-rpc: the client is disposed"));
    this.setState("stopped");
  }

  // --- requests ----------------------------------------------------------------------

  private rawRequest<M extends ClientRequestName>(
    gen: Generation,
    method: M,
    params: ParamsOf<M>,
    token?: CancellationToken,
  ): Promise<ResultOf<M>> {
    return new Promise<ResultOf<M>>((resolve, reject) => {
      if (gen.handled || gen.exited.settled) {
        reject(new KodeConnectionError(`kode-rpc server (pid ${gen.pid}) is not running`, method));
        return;
      }
      const key = nextKey++;
      let p: Promise<ResultOf<M>>;
      try {
        p = token
          ? gen.conn.sendRequest<ResultOf<M>>(method, params, token)
          : gen.conn.sendRequest<ResultOf<M>>(method, params);
      } catch (e) {
        // The connection closed (the process is going away); the exit path restarts it.
        reject(new KodeConnectionError(`kode-rpc: cannot send ${method}: ${e instanceof Error ? e.message : String(e)}`, method));
        return;
      }
      gen.pending.set(key, { method, reject });
      p.then(
        (r) => {
          gen.pending.delete(key);
          resolve(r);
        },
        (e: unknown) => {
          gen.pending.delete(key);
          if (e instanceof ResponseError && e.code >= -32099 && e.code <= -32096) {
            // vscode-jsonrpc's own codes (write failed, connection disposed/inactive): the server is gone.
            reject(new KodeConnectionError(`kode-rpc: ${method} failed: ${e.message}`, method));
          } else if (e instanceof ResponseError) {
            reject(new KodeRpcError(e.code, e.message, (e.data ?? {}) as KodeRpcError["data"], method));
          } else {
            reject(
              new KodeConnectionError(
                `kode-rpc: ${method} failed: ${e instanceof Error ? e.message : String(e)}`,
                method,
              ),
            );
          }
        },
      );
    });
  }

  /**
   * Sends any client request of the protocol (typed by the generated `Methods` map).
   * Waits while the client restarts the server; rejects with `KodeRpcError` for an
   * error response and `KodeConnectionError` when the server went away first.
   */
  async request<M extends ClientRequestName>(
    method: M,
    params: ParamsOf<M>,
    options: RequestOptions = {},
  ): Promise<ResultOf<M>> {
    if (this._state === "stopping" || this._state === "stopped") {
      throw new KodeConnectionError(`kode-rpc: cannot send ${method}: the client is ${this._state}`, method);
    }
    let cts: CancellationTokenSource | undefined;
    let timer: NodeJS.Timeout | undefined;
    let token = options.token;
    const onAbort = () => cts?.cancel();
    if (options.signal || options.timeoutMs !== undefined) {
      cts = new CancellationTokenSource();
      options.token?.onCancellationRequested(() => cts!.cancel());
      if (options.token?.isCancellationRequested) cts.cancel();
      if (options.signal) {
        if (options.signal.aborted) cts.cancel();
        else options.signal.addEventListener("abort", onAbort, { once: true });
      }
      if (options.timeoutMs !== undefined) timer = setTimeout(() => cts!.cancel(), options.timeoutMs);
      token = cts.token;
    }
    try {
      if (this._state !== "running") await this.ready.promise;
      if (token?.isCancellationRequested) {
        throw new KodeRpcError(ErrorCodes.RequestCancelled, `${method} was cancelled before it was sent`, { reason: "cancelled" }, method);
      }
      return await this.rawRequest(this.gen!, method, params, token);
    } finally {
      if (timer) clearTimeout(timer);
      options.signal?.removeEventListener("abort", onAbort);
      cts?.dispose();
    }
  }

  private watch(agentId: string | undefined): void {
    if (agentId) this.watched.add(agentId);
  }

  private unwatch(agentId: string): void {
    this.watched.delete(agentId);
    this.baselines.delete(agentId);
  }

  /** Runs an agent-scoped request, watching the agent; a -32002 unwatches it. */
  private async agentRequest<M extends ClientRequestName>(
    method: M,
    params: ParamsOf<M> & { agentId: string },
    options: RequestOptions | undefined,
    watch: boolean,
  ): Promise<ResultOf<M>> {
    const wasWatched = this.watched.has(params.agentId);
    if (watch && AGENT_ID_RE.test(params.agentId)) this.watch(params.agentId);
    try {
      return await this.request(method, params, options);
    } catch (e) {
      if (!wasWatched && e instanceof KodeRpcError && (e.code === ErrorCodes.NotFound || e.code === ErrorCodes.InvalidParams)) {
        this.unwatch(params.agentId);
      }
      throw e;
    }
  }

  // --- typed API: agents -------------------------------------------------------------

  /** `agent/create`. The client is subscribed (sees `seq` 1) and watches the agent. */
  async createAgent(config: AgentConfig = {}, options?: RequestOptions): Promise<AgentInfo> {
    const info = await this.request("agent/create", config, options);
    this.watch(info.agentId);
    if (!this.cursors.has(info.agentId)) this.cursors.set(info.agentId, 0);
    return info;
  }

  /**
   * `agent/resume`: subscribes to the agent, replaying stored events after `since`.
   * Replayed events this client already delivered are dropped (exactly-once per client);
   * read history with `events()` instead.
   */
  async resumeAgent(params: ResumeParams, options?: RequestOptions): Promise<ResumeResult> {
    const r = await this.agentRequest("agent/resume", params, options, true);
    if (!this.cursors.has(params.agentId)) {
      if (params.since !== undefined && params.since !== null) this.cursors.set(params.agentId, params.since);
      else this.baselines.set(params.agentId, r.lastSeq);
    }
    return r;
  }

  /** Subscribes to an existing agent's events from now on (`agent/resume` without replay unless `since`). */
  subscribe(agentId: string, since?: number, options?: RequestOptions): Promise<ResumeResult> {
    const params: ResumeParams = { agentId };
    if (since !== undefined) params.since = since;
    return this.resumeAgent(params, options);
  }

  /** `agent/send`: returns at once; the turn streams as events and ends with one `done`. */
  send(params: SendParams, options?: RequestOptions): Promise<SendResult> {
    return this.agentRequest("agent/send", params, options, true);
  }

  /**
   * `agent/complete`: sends and waits for the turn's `done`. A turn that failed (a
   * provider error included) resolves with `status: "error"` and
   * `error: {type, message, retryable}`; check `status`. The promise rejects only when
   * the request itself failed: `KodeRpcError` for bad params (`-32602`), an unknown agent
   * (`-32002`), a server shutting down (`-32001`), or `-32800` when cancelled (token/signal
   * send `$/cancelRequest`; the turn goes on: stop it with `interrupt`), and
   * `KodeConnectionError` when the server went away first.
   */
  async complete(params: SendParams, options?: RequestOptions): Promise<CompleteOutcome> {
    return (await this.agentRequest("agent/complete", params, options, true)) as CompleteOutcome;
  }

  interrupt(params: InterruptParams, options?: RequestOptions): Promise<InterruptResult> {
    return this.request("agent/interrupt", params, options);
  }

  /** `agent/decide`: answers a pending approval (first answer wins; later ones get -32011). */
  decide(params: DecideParams, options?: RequestOptions): Promise<DecideResult> {
    return this.agentRequest("agent/decide", params, options, true);
  }

  status(params: AgentRef, options?: RequestOptions): Promise<AgentStatus> {
    return this.request("agent/status", params, options);
  }

  list(params: ListParams = {}, options?: RequestOptions): Promise<ListResult> {
    return this.request("agent/list", params, options);
  }

  messages(params: MessagesParams, options?: RequestOptions): Promise<MessagesResult> {
    return this.request("agent/messages", params, options);
  }

  /** `agent/events`: reads stored events (returned, not delivered to listeners). */
  events(params: EventsParams, options?: RequestOptions): Promise<EventsResult> {
    return this.request("agent/events", params, options);
  }

  fork(params: ForkParams, options?: RequestOptions): Promise<AgentInfo> {
    return this.request("agent/fork", params, options);
  }

  /** `agent/todos`: reads, or sets when `todos` is given (which subscribes, like the server does). */
  todos(params: TodosParams, options?: RequestOptions): Promise<TodosResult> {
    return this.agentRequest("agent/todos", params, options, params.todos !== undefined && params.todos !== null);
  }

  async deleteAgent(params: AgentRef, options?: RequestOptions): Promise<DeleteResult> {
    const r = await this.request("agent/delete", params, options);
    this.unwatch(params.agentId);
    this.cursors.delete(params.agentId);
    return r;
  }

  // --- typed API: server -------------------------------------------------------------

  poolStats(options?: RequestOptions): Promise<PoolStats> {
    return this.request("pool/stats", {}, options);
  }

  templates(options?: RequestOptions): Promise<TemplatesResult> {
    return this.request("templates/list", {}, options);
  }

  storeHealth(options?: RequestOptions): Promise<StoreHealth> {
    return this.request("store/health", {}, options);
  }

  storeConsistency(params: ConsistencyParams, options?: RequestOptions): Promise<ConsistencyResult> {
    return this.request("store/consistency", params, options);
  }

  storeMetrics(options?: RequestOptions): Promise<StoreMetrics> {
    return this.request("store/metrics", {}, options);
  }

  prometheus(options?: RequestOptions): Promise<PrometheusResult> {
    return this.request("metrics/prometheus", {}, options);
  }

  /**
   * Sends `shutdown` only (the server then refuses everything but `exit`); the exit that
   * follows is not treated as a crash. Prefer `dispose()`, which also sends `exit`,
   * waits and kills.
   */
  async shutdown(options?: RequestOptions): Promise<null> {
    this.expectExit = true;
    return this.request("shutdown", {}, options);
  }
}

let nextKey = 1;
